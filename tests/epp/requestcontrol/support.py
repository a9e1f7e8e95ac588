"""Exchanges for request-control unit tests: a routed (or not) request and what its answer said."""

from __future__ import annotations

from epp.datastore import Datastore
from epp.extproc.stream import Exchange
from epp.requestcontrol.plugins import EppExchange, EppState


def exchange(
    *,
    model: str = "google/gemma-2b-it",
    headers: dict[str, str] | None = None,
    status: int = 0,
    response_headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> EppExchange:
    """An exchange for ``model`` whose answer had ``status`` (0: none came) and ``body``."""
    ex = Exchange(EppState())
    ex.model = model
    ex.headers = dict(headers or {})
    if status:
        ex.response.on_headers({":status": str(status), **(response_headers or {})})
        ex.response.on_body(body)
    return ex


def routed(ex: EppExchange, datastore: Datastore, address: str) -> EppExchange:
    """``ex`` as the director leaves a request it routed to ``address``."""
    ex.state.address = address
    ex.state.count = datastore.acquire(address)
    ex.outcome = "routed"
    return ex
