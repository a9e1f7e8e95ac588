from __future__ import annotations

from epp.requestcontrol.request_metrics import RequestMetrics
from epp.telemetry import Telemetry

from tests.epp.extproc_support import pool
from tests.epp.requestcontrol.support import exchange


def test_every_exchange_is_counted_once_and_unknown_models_are_other() -> None:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    telemetry = Telemetry("epp", datastore)
    metrics = RequestMetrics(telemetry, datastore)
    known = exchange(model="m")
    known.outcome = "routed"
    stranger = exchange(model="made-up-" + "x" * 50)
    stranger.outcome = "unknown_model"
    nameless = exchange(model="")
    nameless.outcome = "models"
    for ex in (known, stranger, nameless):
        metrics.response_complete(ex)
    sample = telemetry.registry.get_sample_value
    assert sample("epp_requests_total", {"model": "m", "outcome": "routed"}) == 1
    assert sample("epp_requests_total", {"model": "other", "outcome": "unknown_model"}) == 1
    assert sample("epp_requests_total", {"model": "none", "outcome": "models"}) == 1
