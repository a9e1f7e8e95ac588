"""lora-affinity-scorer: prefer endpoints where the requested LoRA adapter is already loaded.

From the endpoint's ``vllm:lora_requests_info``: the adapter running scores 1; room to load one more
adapter (running + waiting adapters below ``max_loras``) scores 0.8; the adapter only queued for
loading scores 0.6; a full endpoint scores 0. A base-model request scores 1 everywhere, since no
adapter has to be loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.framework import Scorer
from epp.scheduling.registry import register
from epp.scheduling.types import CycleState, LLMRequest

RUNNING = 1.0
HAS_ROOM = 0.8
QUEUED = 0.6
FULL = 0.0


@register
class LoraAffinityScorer(Scorer):
    type_name = "lora-affinity-scorer"

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        model = request.model
        scores = []
        for endpoint in endpoints:
            if model not in endpoint.lora_parents:
                scores.append(RUNNING)
                continue
            metrics = endpoint.metrics
            if model in metrics.running_adapters:
                scores.append(RUNNING)
            elif len(metrics.running_adapters) + len(metrics.waiting_adapters) < metrics.max_loras:
                scores.append(HAS_ROOM)
            elif model in metrics.waiting_adapters:
                scores.append(QUEUED)
            else:
                scores.append(FULL)
        return scores

