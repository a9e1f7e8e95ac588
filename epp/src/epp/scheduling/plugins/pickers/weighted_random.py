"""weighted-random-picker: an endpoint with probability proportional to its total score.

Endpoints scoring 0 are never chosen unless every endpoint scores 0, in which case the choice is
uniform. With ``maxNumOfEndpoints`` > 1 the ranking is a weighted sample without replacement
(Efraimidis-Spirakis keys ``u ** (1 / score)``), zero scores ranked last in random order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.factory import PluginType
from epp.scheduling.framework import Handle, Picker
from epp.scheduling.plugins.pickers.parameters import PickerParameters


class WeightedRandomPicker(Picker):
    type_name = "weighted-random-picker"

    def __init__(self, name: str, rng: random.Random, max_num_of_endpoints: int = 1) -> None:
        super().__init__(name)
        self._rng = rng
        self.max_num_of_endpoints = max_num_of_endpoints

    def pick(self, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> list[Endpoint]:
        if not endpoints:
            return []
        rng = self._rng
        if self.max_num_of_endpoints == 1:
            total = sum(s for s in scores if s > 0)
            if total <= 0:
                return [endpoints[rng.randrange(len(endpoints))]]
            target = rng.random() * total
            last = 0
            for i, s in enumerate(scores):
                if s > 0:
                    last = i
                    target -= s
                    if target < 0:
                        return [endpoints[i]]
            return [endpoints[last]]  # rounding left target at 0: the last positive one
        keys = [rng.random() ** (1.0 / s) if s > 0 else -rng.random() for s in scores]
        order = sorted(range(len(endpoints)), key=keys.__getitem__, reverse=True)
        return [endpoints[i] for i in order[: self.max_num_of_endpoints]]


def _build(name: str, parameters: PickerParameters, handle: Handle) -> WeightedRandomPicker:
    return WeightedRandomPicker(name, handle.rng, parameters.max_num_of_endpoints)


PLUGIN_TYPES = (PluginType("weighted-random-picker", WeightedRandomPicker, PickerParameters, _build),)
