"""Model refresh: a pod that answers "model not found" has its models re-read soon.

A routed request was sent to a pod that the EPP believed served its model; a 404 saying the model
does not exist (vLLM's answer) means the pod's models changed (an adapter unloaded), so the prober is
asked to re-read that pod's ``/v1/models`` without waiting for its next interval.
"""

from __future__ import annotations

import logging
from typing import Protocol

from epp.requestcontrol.plugins import EppExchange

_log = logging.getLogger("epp.picker")


class ModelRefresher(Protocol):
    def request_refresh(self, address: str) -> bool:
        """Re-read the models of endpoint ``address`` soon (never blocks)."""
        ...


class ModelRefresh:
    def __init__(self, refresher: ModelRefresher) -> None:
        self._refresher = refresher

    def response_complete(self, exchange: EppExchange) -> None:
        address = exchange.state.address
        response = exchange.response
        if address and response.status == 404 and response.model_not_found():
            _log.info(
                "backend does not serve the model any more; refreshing its models",
                extra={"request_id": exchange.request_id, "endpoint": address, "model": exchange.model},
            )
            self._refresher.request_refresh(address)
