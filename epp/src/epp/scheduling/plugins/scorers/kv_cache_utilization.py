"""kv-cache-utilization-scorer: the emptier the KV cache, the higher the score (1 - usage)."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.framework import Scorer
from epp.scheduling.registry import register
from epp.scheduling.types import CycleState, LLMRequest


@register
class KVCacheUtilizationScorer(Scorer):
    type_name = "kv-cache-utilization-scorer"

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        return [1.0 - e.metrics.kv_cache_usage for e in endpoints]

