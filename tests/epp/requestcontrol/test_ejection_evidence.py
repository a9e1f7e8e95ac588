from __future__ import annotations

from epp.contract import UPSTREAM_CONNECT_FAILURE, UPSTREAM_FAILURE_HEADER, UPSTREAM_RESET, UPSTREAM_SILENT
from epp.requestcontrol.ejection_evidence import EjectionEvidence

from tests.epp.extproc_support import pool
from tests.epp.requestcontrol.support import exchange, routed


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def connect_failed(self, address: str) -> None:
        self.seen.append(("connect_failed", address))

    def answered(self, address: str) -> None:
        self.seen.append(("answered", address))


def test_a_refused_connection_counts_against_the_endpoint_and_an_answer_for_it() -> None:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    observer = Observer()
    evidence = EjectionEvidence(observer)
    refused = exchange(status=502, response_headers={UPSTREAM_FAILURE_HEADER: UPSTREAM_CONNECT_FAILURE})
    evidence.response_complete(routed(refused, datastore, "10.0.0.1:8000"))
    evidence.response_complete(routed(exchange(status=500), datastore, "10.0.0.1:8000"))
    assert observer.seen == [("connect_failed", "10.0.0.1:8000"), ("answered", "10.0.0.1:8000")]


def test_no_answer_or_no_pick_says_nothing() -> None:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    observer = Observer()
    evidence = EjectionEvidence(observer)
    evidence.response_complete(routed(exchange(status=0), datastore, "10.0.0.1:8000"))  # cancelled
    evidence.response_complete(exchange(status=200))  # never routed
    assert observer.seen == []


def test_the_gateways_own_answer_for_a_silent_or_reset_pod_does_not_count_as_the_pod_answering() -> None:
    """A hung pod whose requests end in the gateway's 504 must not look alive to the ejector."""
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    observer = Observer()
    evidence = EjectionEvidence(observer)
    for status, kind in ((504, UPSTREAM_SILENT), (502, UPSTREAM_RESET)):
        made = exchange(status=status, response_headers={UPSTREAM_FAILURE_HEADER: kind})
        evidence.response_complete(routed(made, datastore, "10.0.0.1:8000"))
    assert observer.seen == []
