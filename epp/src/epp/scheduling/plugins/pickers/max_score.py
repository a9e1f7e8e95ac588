"""max-score-picker: the highest total score wins; ties are broken at random."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.plugins.pickers.base import RankingPicker
from epp.scheduling.registry import register


@register
class MaxScorePicker(RankingPicker):
    type_name = "max-score-picker"

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

