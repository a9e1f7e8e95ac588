"""max-score-picker: the highest total score wins; ties are broken at random."""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.factory import PluginType
from epp.scheduling.framework import Handle, Picker
from epp.scheduling.plugins.pickers.parameters import PickerParameters


class MaxScorePicker(Picker):
    type_name = "max-score-picker"

    def __init__(self, name: str, rng: random.Random, max_num_of_endpoints: int = 1) -> None:
        super().__init__(name)
        self._rng = rng
        self.max_num_of_endpoints = max_num_of_endpoints

    def pick(self, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> list[Endpoint]:
        if not endpoints:
            return []
        if self.max_num_of_endpoints == 1:
            # One pass; among equal best scores each is kept with probability 1/ties (reservoir).
            best, chosen, ties = scores[0], 0, 1
            for i in range(1, len(scores)):
                s = scores[i]
                if s > best:
                    best, chosen, ties = s, i, 1
                elif s == best:
                    ties += 1
                    if self._rng.random() * ties < 1.0:
                        chosen = i
            return [endpoints[chosen]]
        order = list(range(len(endpoints)))
        self._rng.shuffle(order)
        order.sort(key=lambda i: scores[i], reverse=True)  # stable: ties stay shuffled
        return [endpoints[i] for i in order[: self.max_num_of_endpoints]]


def _build(name: str, parameters: PickerParameters, handle: Handle) -> MaxScorePicker:
    return MaxScorePicker(name, handle.rng, parameters.max_num_of_endpoints)


PLUGIN_TYPES = (PluginType("max-score-picker", MaxScorePicker, PickerParameters, _build),)
