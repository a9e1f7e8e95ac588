"""active-request-scorer: fewer requests in flight from this EPP score higher (llm-d semantics).

Reads ``Endpoint.in_flight``: this EPP's requests to the endpoint whose answers have not begun, or
whose answers it still reads (``datastore.InFlight``). With
``most`` the largest count among the candidates, an endpoint with ``n`` in flight scores
``(most - n) / most``; idle endpoints (and everyone, when all are idle) score 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.framework import Scorer
from epp.scheduling.registry import register
from epp.scheduling.types import CycleState, LLMRequest


@register
class ActiveRequestScorer(Scorer):
    type_name = "active-request-scorer"

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        counts = [e.in_flight for e in endpoints]
        most = max(counts)
        if most <= 0:
            return [1.0] * len(counts)
        return [(most - n) / most for n in counts]

