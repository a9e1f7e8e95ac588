"""queue-scorer: fewer waiting requests score higher, min-max normalised over the candidates.

The endpoint with the shortest waiting queue (``vllm:num_requests_waiting``) scores 1, the longest 0,
the others linearly in between; when all queues are equal every endpoint scores 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.framework import Scorer
from epp.scheduling.registry import register
from epp.scheduling.types import CycleState, LLMRequest


@register
class QueueScorer(Scorer):
    type_name = "queue-scorer"

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        waiting = [e.metrics.waiting for e in endpoints]
        low, high = min(waiting), max(waiting)
        if high == low:
            return [1.0] * len(waiting)
        span = high - low
        return [(high - w) / span for w in waiting]

