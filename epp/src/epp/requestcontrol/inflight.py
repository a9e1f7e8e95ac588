"""In-flight release: a routed request's count on its endpoint goes back when its exchange is over.

The count is acquired by the director when the request is routed and is kept by the datastore (see
``epp.datastore.InFlight`` for what "in flight" means); this plugin gives it back, exactly once, and
says whether the request may still be running on its pod then (a stream let go of at its first byte):
while none is, the count is exact and the pod's load is read from it (``Endpoint.estimated_loads``).
"""

from __future__ import annotations

from epp.datastore import Datastore
from epp.requestcontrol.answer_ends import end_seen
from epp.requestcontrol.plugins import EppExchange


def may_still_run(exchange: EppExchange) -> bool:
    """The request's answer began on its pod and its end was not seen here (``end_seen``): it may
    still be running there."""
    response = exchange.response
    return bool(response.status) and not response.connect_failed and not end_seen(exchange)


class InFlightRelease:
    def __init__(self, datastore: Datastore) -> None:
        self._datastore = datastore

    def response_complete(self, exchange: EppExchange) -> None:
        state = exchange.state
        count = state.count
        if count is not None:
            state.count = None
            self._datastore.release(state.address, count, early=may_still_run(exchange))
