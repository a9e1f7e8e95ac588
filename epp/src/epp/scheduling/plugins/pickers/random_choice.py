"""random-picker: a uniformly random endpoint, whatever the scores."""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.factory import PluginType
from epp.scheduling.framework import Handle, Picker
from epp.scheduling.plugins.pickers.parameters import PickerParameters


class RandomPicker(Picker):
    type_name = "random-picker"

    def __init__(self, name: str, rng: random.Random, max_num_of_endpoints: int = 1) -> None:
        super().__init__(name)
        self._rng = rng
        self.max_num_of_endpoints = max_num_of_endpoints

    def pick(self, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> list[Endpoint]:
        if not endpoints:
            return []
        if self.max_num_of_endpoints == 1:
            return [endpoints[self._rng.randrange(len(endpoints))]]
        return self._rng.sample(list(endpoints), min(self.max_num_of_endpoints, len(endpoints)))


def _build(name: str, parameters: PickerParameters, handle: Handle) -> RandomPicker:
    return RandomPicker(name, handle.rng, parameters.max_num_of_endpoints)


PLUGIN_TYPES = (PluginType("random-picker", RandomPicker, PickerParameters, _build),)
