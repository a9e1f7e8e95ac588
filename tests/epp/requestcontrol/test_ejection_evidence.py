from __future__ import annotations

from epp.contract import UPSTREAM_CONNECT_FAILURE, UPSTREAM_FAILURE_HEADER, UPSTREAM_RESET, UPSTREAM_SILENT
from epp.requestcontrol.ejection_evidence import EjectionEvidence

from tests.epp.extproc_support import pool
from tests.epp.requestcontrol.support import exchange, routed


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.alive: list[float | None] = []

    def connect_failed(self, address: str) -> None:
        self.seen.append(("connect_failed", address))

    def answered(self, address: str, alive_at: float | None = None) -> None:
        self.seen.append(("answered", address))
        self.alive.append(alive_at)


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


def test_only_the_pods_own_answers_that_are_not_server_errors_show_it_alive_as_of_their_last_byte() -> None:
    """A hung pod whose requests end in the gateway's 504, or in a load balancer's 5xx, must not look
    alive to the ejector; a connection that was made still resets the refused-connection count."""
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    observer = Observer()
    evidence = EjectionEvidence(observer)
    made = [
        exchange(status=504, response_headers={UPSTREAM_FAILURE_HEADER: UPSTREAM_SILENT}),
        exchange(status=502, response_headers={UPSTREAM_FAILURE_HEADER: UPSTREAM_RESET}),
        exchange(status=503),  # a load balancer's own, or the pod's: no proof of life either way
        exchange(status=400, body=b'{"error": {}}'),  # the pod's own answer to a bad request
    ]
    for ex in made:
        evidence.response_complete(routed(ex, datastore, "10.0.0.1:8000"))
    assert observer.seen == [("answered", "10.0.0.1:8000")] * 4
    assert observer.alive[:3] == [None, None, None]
    assert observer.alive[3] == made[3].response.last_at > 0
