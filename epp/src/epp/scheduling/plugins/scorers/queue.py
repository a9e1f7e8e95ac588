"""queue-scorer: fewer waiting requests score higher, min-max normalised over the candidates.

The endpoint with the shortest waiting queue (``vllm:num_requests_waiting``) scores 1, the longest 0,
the others linearly in between; when all queues are equal every endpoint scores 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.factory import NoParameters, PluginType
from epp.scheduling.framework import Handle, Scorer
from epp.scheduling.types import CycleState, LLMRequest


class QueueScorer(Scorer):
    type_name = "queue-scorer"

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        waiting = [e.metrics.waiting for e in endpoints]
        low, high = min(waiting), max(waiting)
        if high == low:
            return [1.0] * len(waiting)
        span = high - low
        return [(high - w) / span for w in waiting]


def _build(name: str, parameters: NoParameters, handle: Handle) -> QueueScorer:
    return QueueScorer(name)


PLUGIN_TYPES = (PluginType("queue-scorer", QueueScorer, NoParameters, _build),)
