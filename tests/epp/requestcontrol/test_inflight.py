from __future__ import annotations

from epp.requestcontrol.inflight import InFlightRelease

from tests.epp.extproc_support import pool
from tests.epp.requestcontrol.support import exchange, routed


def test_a_routed_request_gives_its_count_back_once() -> None:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    release = InFlightRelease(datastore)
    ex = routed(exchange(status=200), datastore, "10.0.0.1:8000")
    endpoint = datastore.get("10.0.0.1:8000")
    assert endpoint is not None
    assert endpoint.in_flight == 1
    release.response_complete(ex)
    release.response_complete(ex)
    assert endpoint.in_flight == 0


def test_a_request_never_routed_releases_nothing() -> None:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    other = routed(exchange(), datastore, "10.0.0.1:8000")
    InFlightRelease(datastore).response_complete(exchange())
    assert datastore.get("10.0.0.1:8000").in_flight == 1  # type: ignore[union-attr]
    InFlightRelease(datastore).response_complete(other)
    assert datastore.get("10.0.0.1:8000").in_flight == 0  # type: ignore[union-attr]
