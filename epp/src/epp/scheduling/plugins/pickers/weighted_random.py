"""weighted-random-picker: an endpoint with probability proportional to its total score.

Endpoints scoring 0 are never chosen unless every endpoint scores 0, in which case the choice is
uniform. With ``maxNumOfEndpoints`` > 1 the ranking is a weighted sample without replacement
(Efraimidis-Spirakis keys ``u ** (1 / score)``), zero scores ranked last in random order.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.plugins.pickers.base import RankingPicker
from epp.scheduling.registry import register


@register
class WeightedRandomPicker(RankingPicker):
    type_name = "weighted-random-picker"

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

