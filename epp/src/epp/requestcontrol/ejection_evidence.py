"""Ejection evidence: what each routed request met at its endpoint, for passive ejection.

An answer that says the gateway could not connect to the picked endpoint (the one box's local reply
carries ``x-gateway-upstream-failure: connect``) counts against the endpoint; any other answer counts
for it (``epp.discovery.ejection.Ejector``). A request cancelled before any answer says nothing.
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
        else:
            self._outliers.answered(address)
