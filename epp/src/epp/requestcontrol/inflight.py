"""In-flight release: a routed request's count on its endpoint goes back when its exchange is over.

The count is acquired by the director when the request is routed and is kept by the datastore (see
``epp.datastore.InFlight`` for what "in flight" means); this plugin gives it back, exactly once, and
says whether the request may still be running on its pod then (a stream let go of at its first byte):
while none is, the count is exact and the pod's load is read from it (``Endpoint.estimated_loads``).
"""

from __future__ import annotations

from epp.datastore import Datastore
from epp.requestcontrol.answer_ends import ENDS_AT_HEADERS
from epp.requestcontrol.plugins import EppExchange


def may_still_run(exchange: EppExchange) -> bool:
    """The request's answer began and its end was not seen: it may still be on its pod. Not a request
    that was never answered or never reached its pod, nor an answer that came whole once the pod was
    done (completions, chat completions, embeddings: ``ENDS_AT_HEADERS``), nor a stream whose last
    event (``data: [DONE]``) came through even if the client left before the stream's very end. A
    whole answer on another path (``/v1/responses``, which may answer at once and work on after) may
    still run even when all of it came through."""
    response = exchange.response
    if not response.status or response.connect_failed:
        return False
    if not response.streaming:
        # A whole answer that came before the work was done (/v1/responses with "background": true)
        # leaves the pod busy however much of it came through.
        return exchange.path not in ENDS_AT_HEADERS
    return not (response.ended or response.finished)


class InFlightRelease:
    def __init__(self, datastore: Datastore) -> None:
        self._datastore = datastore

    def response_complete(self, exchange: EppExchange) -> None:
        state = exchange.state
        count = state.count
        if count is not None:
            state.count = None
            self._datastore.release(state.address, count, early=may_still_run(exchange))
