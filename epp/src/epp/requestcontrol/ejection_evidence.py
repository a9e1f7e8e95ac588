"""Ejection evidence: what each routed request met at its endpoint, for passive ejection.

An answer that says the gateway could not connect to the picked endpoint (the one box's local reply
carries ``x-gateway-upstream-failure: connect``) counts against the endpoint; an answer the endpoint
sent, whatever its status, counts for it (``epp.discovery.ejection.Ejector``: it is up and serving).
The gateway's own answer for an endpoint that went silent or broke the connection
(``x-gateway-upstream-failure: silent`` or ``reset``), and a request cancelled before any answer,
say nothing.
"""

from __future__ import annotations

from typing import Protocol

from epp.requestcontrol.plugins import EppExchange


class OutlierObserver(Protocol):
    """Told what each routed request met at its endpoint (``epp.discovery.ejection.Ejector``)."""

    def connect_failed(self, address: str) -> None: ...

    def answered(self, address: str) -> None: ...


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
        elif not response.from_gateway:
            self._outliers.answered(address)
