"""The Endpoint Picker servicer: each request goes to one ready endpoint that serves its model.

``GET /v1/models`` is answered here with the union of the ready endpoints' models (and
``GET /v1/models/{id}`` with one of them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse
from google.protobuf.struct_pb2 import Struct

from epp.datastore import Datastore, Endpoint
from epp.extproc.body import parse_body, require_model
from epp.extproc.errors import RequestError, unknown_model
from epp.extproc.messages import (
    DESTINATION_HEADER,
    SUBSET_HINT_KEY,
    SUBSET_HINT_NAMESPACE,
    destination_metadata,
    header_option,
    route_request_headers,
)
from epp.extproc.models import ModelList
from epp.extproc.stream import DEFAULT_MAX_BODY_BYTES, Exchange, ExtProcServicer
from epp.scheduling.types import LLMRequest, SchedulingResult
from epp.telemetry import OTHER_MODEL, Telemetry

_log = logging.getLogger("epp.picker")


class Scheduler(Protocol):
    def schedule(self, request: LLMRequest, candidates: Sequence[Endpoint]) -> SchedulingResult: ...


class SaturationDetector(Protocol):
    def saturated(self, endpoints: Sequence[Endpoint], now: float) -> bool: ...


class ModelRefresher(Protocol):
    def request_refresh(self, address: str) -> bool:
        """Re-read the models of endpoint ``address`` soon (never blocks)."""


class _Pick:
    """What a routed request holds until its response ends."""

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint


class _Destination:
    """Prebuilt per-endpoint pieces of the routing answer."""

    __slots__ = ("header", "metadata")

    def __init__(self, address: str) -> None:
        self.header = header_option(DESTINATION_HEADER, address)
        self.metadata = destination_metadata(address)


class EndpointPicker(ExtProcServicer):
    """Schedules each request on the pool's endpoints and keeps their in-flight counts exact."""

    def __init__(
        self,
        datastore: Datastore,
        scheduler: Scheduler,
        telemetry: Telemetry,
        *,
        saturation: SaturationDetector | None = None,
        shed_on_saturation: bool = False,
        refresher: ModelRefresher | None = None,
        pool_models: Iterable[str] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        super().__init__(max_body_bytes=max_body_bytes)
        self._datastore = datastore
        self._scheduler = scheduler
        self._telemetry = telemetry
        self._saturation = saturation
        self._shed = shed_on_saturation and saturation is not None
        self._refresher = refresher
        self._models = ModelList(datastore.served_models)
        self._destinations: dict[str, _Destination] = {}
        self._version = -1
        self._pool_models = frozenset(pool_models)
        # Models a request may name: the configured ones and whatever the pods report.
        self._known: frozenset[str] = self._pool_models
        self._candidates: tuple[Endpoint, ...] = ()

    def _refresh_view(self) -> None:
        """Re-derive the known models and the routable endpoints once per change of the datastore
        (membership or models), not on every request."""
        if self._version != self._datastore.version:
            self._known = self._pool_models.union(self._datastore.served_models())
            self._candidates = tuple(self._datastore.routable())
            self._version = self._datastore.version

    def decide(self, exchange: Exchange) -> ProcessingResponse:
        if exchange.body is None:
            models = self._models.answer(exchange.method, exchange.path, self._datastore.version)
            if models is not None:
                exchange.outcome = "models"
                return models
            raise RequestError(
                400,
                f"{exchange.method} {exchange.path} has no body; send a JSON body with a 'model'.",
                None,
                "no_body",
            )
        parsed = parse_body(exchange.body)
        model = require_model(parsed)
        exchange.model = model
        self._refresh_view()
        if model not in self._known:
            raise unknown_model(model, sorted(self._known))
        subset = _subset_hint(exchange.metadata)
        if subset is not None and not subset:
            raise RequestError(503, "The gateway's endpoint subset hint is empty.", None, "empty_subset")
        candidates = self._candidates
        started = time.perf_counter()
        if self._shed and self._saturation is not None:
            # Shed only what could have been picked: the model's endpoints within the subset hint.
            # None of them at all is no saturation but a 503, which the scheduler answers below.
            serving = [e for e in candidates if e.serves(model) and (subset is None or e.address in subset)]
            if serving and self._saturation.saturated(serving, time.monotonic()):
                raise RequestError(
                    429, f"Every endpoint serving '{model}' is saturated; retry later.", "model", "saturated"
                )
        request = LLMRequest(
            request_id=exchange.request_id,
            model=model,
            prompt=parsed.prompt,
            headers=exchange.headers,
            subset=subset,
        )
        result = self._scheduler.schedule(request, candidates)
        self._telemetry.scheduling_seconds.observe(time.perf_counter() - started)
        endpoint = result.endpoint
        if endpoint is None:
            where = " in the gateway's subset hint" if result.rejected_by == "subset" else ""
            raise RequestError(
                503, f"No ready endpoint{where} serves the model '{model}' right now.", "model", "no_endpoint"
            )
        endpoint.in_flight += 1
        exchange.state = _Pick(endpoint)
        exchange.endpoint_address = address = endpoint.address
        exchange.outcome = "routed"
        destination = self._destinations.get(address)
        if destination is None:
            destination = self._destinations[address] = _Destination(address)
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "picked endpoint",
                extra={"request_id": exchange.request_id, "model": model, "endpoint": address,
                       "profile": result.profile, "scores": result.scores},
            )
        return route_request_headers(
            (destination.header, header_option("content-length", str(len(exchange.body)))),
            destination.metadata,
        )

    def finish(self, exchange: Exchange) -> None:
        pick = exchange.state
        response = exchange.response
        if isinstance(pick, _Pick):
            pick.endpoint.in_flight -= 1
            if response.status == 404 and self._refresher is not None and response.model_not_found():
                _log.info(
                    "backend does not serve the model any more; refreshing its models",
                    extra={"request_id": exchange.request_id, "endpoint": pick.endpoint.address,
                           "model": exchange.model},
                )
                self._refresher.request_refresh(pick.endpoint.address)
            usage = response.usage()
            if usage is not None:
                self._telemetry.tokens(exchange.model, usage.prompt_tokens, usage.completion_tokens)
        model = exchange.model
        self._telemetry.request(model if not model or model in self._known else OTHER_MODEL, exchange.outcome)

    def forget(self, address: str) -> None:
        """Drop prebuilt answers for an endpoint that left the pool."""
        self._destinations.pop(address, None)


def _subset_hint(metadata: Mapping[str, Struct] | None) -> frozenset[str] | None:
    """``envoy.lb.subset_hint`` → ``x-gateway-destination-endpoint-subset``: a list (or a
    comma-separated string) of ``ip:port``; None when the proxy sent no hint."""
    if not metadata or SUBSET_HINT_NAMESPACE not in metadata:
        return None
    fields = metadata[SUBSET_HINT_NAMESPACE].fields
    if SUBSET_HINT_KEY not in fields:
        return None
    value = fields[SUBSET_HINT_KEY]
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        return frozenset(v.string_value.strip() for v in value.list_value.values if v.string_value.strip())
    if kind == "string_value":
        return frozenset(p.strip() for p in value.string_value.split(",") if p.strip())
    return frozenset()
