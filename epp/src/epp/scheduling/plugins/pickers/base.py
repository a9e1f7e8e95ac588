"""The shared shape of every picker: a random source and how many endpoints to return."""

from __future__ import annotations

import random
from typing import Self

from epp.scheduling.framework import Handle, Picker
from epp.scheduling.plugins.pickers.parameters import PickerParameters


class RankingPicker(Picker):
    """A picker that draws from the scheduler's ``rng`` and returns up to ``max_num_of_endpoints``."""

    Parameters = PickerParameters

    def __init__(self, name: str, rng: random.Random, max_num_of_endpoints: int = 1) -> None:
        super().__init__(name)
        self._rng = rng
        self.max_num_of_endpoints = max_num_of_endpoints

    @classmethod
    def configure(cls, name: str, parameters: PickerParameters, handle: Handle) -> Self:
        """The picker configured by ``parameters``, drawing from the handle's random source."""
        return cls(name, handle.rng, parameters.max_num_of_endpoints)
