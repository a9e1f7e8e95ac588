"""Flow-control admission: the director's admitter that makes a request wait in the EPP's queue
(``epp.flowcontrol.queue``) while its model's endpoints are saturated or still waking.

Who a request belongs to (its fairness id): the tenant the front door named (the API key's name,
``TENANT_HEADER``, which no client can set), else the client's ``x-llm-d-inference-fairness-id``
(or ``x-gateway-inference-fairness-id``), else one shared tenant. Its priority: the front door's
``PRIORITY_HEADER`` (a key entry's ``priority``), else the ``spec.priority`` of the InferenceObjective
named by ``x-llm-d-inference-objective`` (or ``x-gateway-inference-objective``), else 0.
"""

from __future__ import annotations

from collections.abc import Mapping

from epp.contract import (
    FAIRNESS_HEADERS,
    OBJECTIVE_HEADERS,
    PRIORITY_HEADER,
    TENANT_HEADER,
)
from epp.datastore import Endpoint, PoolView
from epp.flowcontrol.queue import FlowController
from epp.requestcontrol.plugins import EppExchange
from epp.scheduling.types import LLMRequest

SHARED_TENANT = "default"


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
    """Admitter (wait for room) and pre-request plugin (count what was sent where)."""

    def __init__(self, controller: FlowController, objectives: Mapping[str, int] | None = None) -> None:
        self.controller = controller
        self._objectives = dict(objectives or {})

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

    async def admit(self, request: LLMRequest, view: PoolView) -> None:
        controller = self.controller
        if not controller.must_wait(request.model, request.subset):
            return  # the common case: room, nobody queued; tenant and priority are not needed
        headers = request.headers
        await controller.wait(
            request.model, request.subset, fairness_id(headers), self.priority(headers), request.body_size
        )

    def pre_request(self, exchange: EppExchange, endpoint: Endpoint) -> None:
        self.controller.sent(endpoint.address)
