"""Ejection evidence: what each routed request met at its endpoint, for passive ejection.

An answer that says the gateway could not connect to the picked endpoint (the one box's local reply
carries ``x-gateway-upstream-failure: connect``) counts against the endpoint; any other answer resets
that count (``epp.discovery.ejection.Ejector``). An answer shows the endpoint alive, as of the last
byte it sent, only where the endpoint made it and it is not a server error: not the gateway's own
answer for an endpoint that went silent or broke the connection (``x-gateway-upstream-failure:
silent`` or ``reset``), and not a 5xx, which a load balancer in front (GKE's, whose replies carry no
such header) may have made for a hung pod. A request cancelled before any answer says nothing.
"""

from __future__ import annotations

from typing import Protocol

from epp.requestcontrol.plugins import EppExchange


class OutlierObserver(Protocol):
    """Told what each routed request met at its endpoint (``epp.discovery.ejection.Ejector``)."""

    def connect_failed(self, address: str) -> None: ...

    def answered(self, address: str, alive_at: float | None = None) -> None: ...


class EjectionEvidence:
    def __init__(self, outliers: OutlierObserver) -> None:
        self._outliers = outliers

    def response_complete(self, exchange: EppExchange) -> None:
        address = exchange.state.address
        response = exchange.response
        if not address or not response.status:
            return
        if response.connect_failed:
            self._outliers.connect_failed(address)
            return
        alive = not response.from_gateway and response.status < 500
        self._outliers.answered(address, response.last_at if alive else None)
