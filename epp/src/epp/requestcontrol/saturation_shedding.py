"""Saturation shedding: a 429 when every endpoint that could take the request is saturated.

The endpoints that could have been picked are the model's, within the proxy's subset hint; none of
them at all is no saturation but a 503, which scheduling answers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from epp.datastore import Endpoint, PoolView
from epp.refusals import RequestError
from epp.scheduling.types import LLMRequest


class SaturationDetector(Protocol):
    def saturated(self, endpoints: Sequence[Endpoint], now: float) -> bool: ...


class SaturationShedding:
    def __init__(self, detector: SaturationDetector) -> None:
        self._detector = detector

    async def admit(self, request: LLMRequest, view: PoolView) -> None:
        serving = view.by_model.get(request.model, ())
        subset = request.subset
        if subset is not None:
            serving = tuple(e for e in serving if e.address in subset)
        if serving and self._detector.saturated(serving, time.monotonic()):
            raise RequestError(
                429, f"Every endpoint serving '{request.model}' is saturated; retry later.", "model",
                "saturated",
            )
