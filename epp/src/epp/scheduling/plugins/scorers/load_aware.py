"""load-aware-scorer: score from the waiting queue against a threshold (llm-d semantics).

An empty queue scores 0.5; ``n`` waiting requests score ``0.5 * (1 - min(n, threshold) / threshold)``,
reaching 0 at ``threshold`` (parameter, default 128). The half-point ceiling leaves room above it for
endpoints with spare capacity, as upstream intends.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from epp.datastore import Endpoint
from epp.scheduling.framework import Handle, Scorer
from epp.scheduling.params import PositiveInt
from epp.scheduling.registry import register
from epp.scheduling.types import CycleState, LLMRequest

DEFAULT_THRESHOLD = 128


class LoadAwareParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: PositiveInt = DEFAULT_THRESHOLD


@register
class LoadAwareScorer(Scorer):
    type_name = "load-aware-scorer"
    Parameters = LoadAwareParameters

    def __init__(self, name: str, threshold: int = DEFAULT_THRESHOLD) -> None:
        super().__init__(name)
        self.threshold = threshold

    @classmethod
    def configure(cls, name: str, parameters: LoadAwareParameters, handle: Handle) -> LoadAwareScorer:
        return cls(name, parameters.threshold)

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        threshold = self.threshold
        return [0.5 * (1.0 - min(e.metrics.waiting, threshold) / threshold) for e in endpoints]

