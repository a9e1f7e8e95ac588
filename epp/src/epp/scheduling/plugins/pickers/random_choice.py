"""random-picker: a uniformly random endpoint, whatever the scores."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.plugins.pickers.base import RankingPicker
from epp.scheduling.registry import register


@register
class RandomPicker(RankingPicker):
    type_name = "random-picker"

    def pick(self, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> list[Endpoint]:
        if not endpoints:
            return []
        if self.max_num_of_endpoints == 1:
            return [endpoints[self._rng.randrange(len(endpoints))]]
        return self._rng.sample(list(endpoints), min(self.max_num_of_endpoints, len(endpoints)))

