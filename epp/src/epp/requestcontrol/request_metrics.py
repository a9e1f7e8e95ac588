"""Request metrics: every exchange counted once by model and outcome (``epp_requests_total``).

A model the pool does not know is labelled ``other``, so the label's values stay bounded whatever
clients send; a request that named no model is labelled ``none``.
"""

from __future__ import annotations

from epp.datastore import Datastore
from epp.requestcontrol.plugins import EppExchange
from epp.telemetry import OTHER_MODEL, Telemetry


class RequestMetrics:
    def __init__(self, telemetry: Telemetry, datastore: Datastore) -> None:
        self._telemetry = telemetry
        self._datastore = datastore

    def response_complete(self, exchange: EppExchange) -> None:
        model = exchange.model
        known = self._datastore.view.known_models
        self._telemetry.request(model if not model or model in known else OTHER_MODEL, exchange.outcome)
