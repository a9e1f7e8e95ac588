"""Flow-control admission: the director's admitter that makes a request wait in the EPP's queue
(``epp.flowcontrol.queue``) while its model's endpoints are saturated or still waking.

Who a request belongs to (its fairness id): the tenant the front door named (the API key's name,
``TENANT_HEADER``, which no client can set), else the client's ``x-llm-d-inference-fairness-id``
(or ``x-gateway-inference-fairness-id``), else one shared tenant. Its priority: the front door's
``PRIORITY_HEADER`` (a key entry's ``priority``), else the ``spec.priority`` of the InferenceObjective
named by ``x-llm-d-inference-objective`` (or ``x-gateway-inference-objective``), else 0.

A request is scheduled among the endpoints the queue found a free slot on (its subset narrowed to
them). The answers of requests that waited, or that took one of their model's last free slots, are
followed to their end: the queue frees their slot as soon as the EPP sees the last byte, rather
than at the pod's next scrape. Any answer seen to its end (usage metering follows them too behind
API keys) frees its slot so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from epp.contract import (
    FAIRNESS_HEADERS,
    OBJECTIVE_HEADERS,
    PRIORITY_HEADER,
    TENANT_HEADER,
)
from epp.datastore import Endpoint, PoolView
from epp.flowcontrol.queue import FlowController
from epp.requestcontrol.director import Plugins
from epp.requestcontrol.plugins import EppExchange
from epp.scheduling.types import LLMRequest

SHARED_TENANT = "default"
# A request that finds at most this many free slots for its model has its answer followed to its end.
FOLLOW_BELOW_ROOM = 2


def fairness_id(headers: Mapping[str, str]) -> str:
    tenant = headers.get(TENANT_HEADER)
    if tenant:
        return tenant
    for name in FAIRNESS_HEADERS:
        value = headers.get(name)
        if value:
            return value[:128]
    return SHARED_TENANT


class FlowControlAdmission:
    """Admitter (wait for a free slot), response reader (follow a held request's answer to its end)
    and response-complete plugin (an answer that ended frees its slot)."""

    def __init__(self, controller: FlowController, objectives: Mapping[str, int] | None = None) -> None:
        self.controller = controller
        self._objectives = dict(objectives or {})
        # Request ids whose answers are followed to their end.
        self._followed: set[str] = set()

    def plugins(self) -> Plugins:
        """The director's extension points this plugin fills (it must be the last admitter: the
        director routes a request let go before anything else runs, as the queue asks)."""
        return Plugins(admitters=(self,), pre_request=(self,), readers=(self,), complete=(self,))

    def priority(self, headers: Mapping[str, str]) -> int:
        # Only the front door sets the priority header (with the tenant's; it strips clients' own).
        given = headers.get(PRIORITY_HEADER) if TENANT_HEADER in headers else None
        if given:
            try:
                return int(given)
            except ValueError:
                pass
        for name in OBJECTIVE_HEADERS:
            objective = headers.get(name)
            if objective:
                return self._objectives.get(objective, 0)
        return 0

    async def admit(self, request: LLMRequest, view: PoolView) -> LLMRequest | None:
        controller = self.controller
        model, subset = request.model, request.subset
        headers = request.headers
        tenant = fairness_id(headers)
        rooms = controller.free(model, subset, tenant)
        if rooms:
            # The common case: room, nobody queued; the priority is not needed.
            free = frozenset(rooms)
            if sum(rooms.values()) <= FOLLOW_BELOW_ROOM:
                self._followed.add(request.request_id)
        else:
            free = await controller.wait(model, subset, tenant, self.priority(headers), request.body_size)
            self._followed.add(request.request_id)
        return _narrowed(request, free, view.by_model.get(model, ()))

    def pre_request(self, exchange: EppExchange, endpoint: Endpoint) -> None:
        request = exchange.state.request
        if request is not None:
            self.controller.started(fairness_id(request.headers), request.model)

    def wants_body(self, exchange: EppExchange) -> bool:
        return exchange.request_id in self._followed

    def wants_more(self, exchange: EppExchange) -> bool:
        return exchange.request_id in self._followed

    def response_complete(self, exchange: EppExchange) -> None:
        self._followed.discard(exchange.request_id)
        state = exchange.state
        if not state.address:
            return  # never routed
        if state.request is not None:
            self.controller.finished(fairness_id(state.request.headers), state.request.model)
        if exchange.response.ended:
            self.controller.ended(state.address)


def _narrowed(request: LLMRequest, free: frozenset[str], serving: tuple[Endpoint, ...]) -> LLMRequest | None:
    """``request`` limited to the endpoints in ``free``; None when that limits nothing."""
    if request.subset is None and len(free) >= len(serving):
        return None
    return dataclasses.replace(request, subset=free)
