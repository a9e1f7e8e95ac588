"""Request metrics: every exchange counted once by model and outcome (``epp_requests_total``), by
status under upstream's names (``telemetry.answered``), and a routed answer's latency when its body
passed through the EPP (time to its first body byte, and to its end).

A model the pool does not know is labelled ``other``, so the label's values stay bounded whatever
clients send; a request that named no model is labelled ``none``.
"""

from __future__ import annotations

import time

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
        label = model if not model or model in known else OTHER_MODEL
        telemetry = self._telemetry
        telemetry.request(label, exchange.outcome)
        state = exchange.state
        response = exchange.response
        if state.address:
            status = response.status
            error = str(status) if status >= 400 else None
            if response.first_body_at:
                now = time.perf_counter()
                telemetry.latency(model, response.first_body_at - state.started, now - state.started)
        else:
            status = exchange.refusal_status
            error = None if exchange.outcome == "models" else exchange.outcome
        telemetry.answered(label, status, error)
