"""In-flight release: a routed request's count on its endpoint goes back when its exchange is over.

The count is acquired by the director when the request is routed and is kept by the datastore (see
``epp.datastore.InFlight`` for what "in flight" means); this plugin gives it back, exactly once.
"""

from __future__ import annotations

from epp.datastore import Datastore
from epp.requestcontrol.plugins import EppExchange


class InFlightRelease:
    def __init__(self, datastore: Datastore) -> None:
        self._datastore = datastore

    def response_complete(self, exchange: EppExchange) -> None:
        state = exchange.state
        count = state.count
        if count is not None:
            state.count = None
            self._datastore.release(state.address, count)
