"""The Endpoint Picker servicer: each request goes to a ready endpoint that serves its model.

Endpoints out of rotation (``Endpoint.ejected``) are not in the view, so they are never picked,
whatever their load score; each routed request's outcome at its endpoint (answered, or the
connection refused) goes to the ``outliers`` observer, the passive half of ejection.

``GET /v1/models`` is answered here with the union of the ready endpoints' models (and
``GET /v1/models/{id}`` with one of them). The picker reads the datastore's current view and owns
the in-flight counts, by address, that the scheduler's plugins read as ``Endpoint.in_flight``.

With a picker ranking several endpoints (``maxNumOfEndpoints`` > 1) the ``envoy.lb`` metadata lists
them best first, comma-separated, as the Endpoint Picker Protocol allows, for a proxy that falls
back along the list. The ``x-gateway-destination-endpoint`` header names the first only: Envoy's
ORIGINAL_DST cluster (the one box's gateway) reads one address from it and fails on a list.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from google.protobuf.struct_pb2 import Struct

from epp.answer_check import AnswerCheck
from epp.contract import (
    DESTINATION_HEADER,
    SUBSET_HINT_KEY,
    SUBSET_HINT_NAMESPACE,
    TENANT_HEADER,
    join_host_port,
    split_host_port,
)
from epp.datastore import Datastore, Endpoint, InFlight, PoolView, canonical_ip
from epp.extproc.body import parse_body, require_model
from epp.extproc.decision import Answer, Decision, Route
from epp.extproc.errors import RequestError, bodyless, unknown_model
from epp.extproc.messages import destination_metadata, header_option
from epp.extproc.models import ModelList
from epp.extproc.stream import DEFAULT_MAX_BODY_BYTES, Exchange, ExtProcServicer
from epp.scheduling.types import LLMRequest, SchedulingResult
from epp.telemetry import OTHER_MODEL, Telemetry

_log = logging.getLogger("epp.picker")

# Rankings seen are kept prebuilt up to this many (a big pool has many orders of its endpoints).
_MAX_RANKED_DESTINATIONS = 4096


class Scheduler(Protocol):
    def schedule(
        self, request: LLMRequest, candidates: Sequence[Endpoint], *, explain: bool = False
    ) -> SchedulingResult: ...


class SaturationDetector(Protocol):
    def saturated(self, endpoints: Sequence[Endpoint], now: float) -> bool: ...


class OutlierObserver(Protocol):
    """Told what each routed request met at its endpoint (``epp.discovery.ejection.Ejector``)."""

    def connect_failed(self, address: str) -> None: ...

    def answered(self, address: str) -> None: ...


class ModelRefresher(Protocol):
    def request_refresh(self, address: str) -> bool:
        """Re-read the models of endpoint ``address`` soon (never blocks)."""


class InFlightCounts:
    """The picker's in-flight requests by address; every endpoint on an address shares its count.

    A count outlives its endpoint while requests to the address are still running, so a pod that
    leaves and comes back (or a new pod on a reused IP) starts from what is really in flight.
    """

    def __init__(self, datastore: Datastore) -> None:
        self._datastore = datastore
        self._counts: dict[str, InFlight] = {}
        for endpoint in datastore:
            self.bind(endpoint)

    def bind(self, endpoint: Endpoint) -> None:
        """Make ``endpoint.in_flight`` read its address's count."""
        count = self._counts.get(endpoint.address)
        if count is None:
            self._counts[endpoint.address] = endpoint.load
        elif endpoint.load is not count:
            endpoint.load = count

    def acquire(self, address: str) -> InFlight:
        count = self._counts.get(address)
        if count is None:
            count = self._counts[address] = InFlight()
        count.count += 1
        return count

    def release(self, address: str, count: InFlight) -> None:
        count.count -= 1
        if count.count <= 0 and self._datastore.get(address) is None and self._counts.get(address) is count:
            del self._counts[address]

    def left(self, address: str) -> None:
        """The address left the pool: its count goes unless requests to it are still running."""
        count = self._counts.get(address)
        if count is not None and count.count <= 0:
            del self._counts[address]

    def __len__(self) -> int:
        return len(self._counts)


class _Pick:
    """What a routed request holds until its response ends."""

    __slots__ = ("address", "checked", "count", "started")

    def __init__(self, address: str, count: InFlight, started: float, checked: bool) -> None:
        self.address = address
        self.count = count
        self.started = started
        # Sampled by the answer check: the answer's body is read and its model checked.
        self.checked = checked


class _Destination:
    """Prebuilt per-destination pieces of the routing answer."""

    __slots__ = ("header", "metadata")

    def __init__(self, primary: str, ranked: str) -> None:
        self.header = header_option(DESTINATION_HEADER, primary)
        self.metadata = destination_metadata(ranked)


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
        outliers: OutlierObserver | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        answer_check: AnswerCheck | None = None,
    ) -> None:
        super().__init__(max_body_bytes=max_body_bytes)
        self._answers = answer_check
        self._datastore = datastore
        self._scheduler = scheduler
        self._telemetry = telemetry
        self._saturation = saturation
        self._shed = shed_on_saturation and saturation is not None
        self._refresher = refresher
        self._outliers = outliers
        self._models = ModelList()
        # Prebuilt routing answers: by address, and by the ranked addresses when fallbacks are sent.
        self._destinations: dict[str, _Destination] = {}
        self._ranked_destinations: dict[str, _Destination] = {}
        self.in_flight = InFlightCounts(datastore)
        datastore.subscribe(self._on_change)

    def _on_change(self, address: str, endpoint: Endpoint | None) -> None:
        if endpoint is not None:
            self.in_flight.bind(endpoint)
            return
        self.in_flight.left(address)
        self._destinations.pop(address, None)
        self._ranked_destinations.clear()

    def decide(self, exchange: Exchange) -> Decision:
        try:
            return self._decide_request(exchange)
        except RequestError as error:
            exchange.state = error.status  # for the answers counted by status in finish
            raise

    def _decide_request(self, exchange: Exchange) -> Decision:
        view = self._datastore.view
        if exchange.body is None:
            return self._bodyless(exchange, view)
        parsed = parse_body(exchange.body)
        model = exchange.model = require_model(parsed)
        if model not in view.known_models:
            raise unknown_model(model, sorted(view.known_models))
        subset = _subset_hint(exchange.metadata)
        if subset is not None and not subset:
            raise RequestError(503, "The gateway's endpoint subset hint is empty.", None, "empty_subset")
        started = time.perf_counter()
        if self._shed and self._saturation is not None:
            self._shed_if_saturated(model, view, subset)
        request = LLMRequest(
            request_id=exchange.request_id, model=model, prompt=parsed.prompt, headers=exchange.headers,
            subset=subset,
        )
        debug = _log.isEnabledFor(logging.DEBUG)
        result = self._scheduler.schedule(request, view.endpoints, explain=debug)
        self._telemetry.scheduling_seconds.observe(time.perf_counter() - started)
        endpoint = result.endpoint
        if endpoint is None:
            where = " in the gateway's subset hint" if result.rejected_by == "subset" else ""
            raise RequestError(
                503, f"No ready endpoint{where} serves the model '{model}' right now.", "model", "no_endpoint"
            )
        address = endpoint.address
        checked = self._answers is not None and self._answers.sample()
        exchange.state = _Pick(address, self.in_flight.acquire(address), started, checked)
        exchange.outcome = "routed"
        destination = self._destination(endpoint, result.endpoints)
        if debug:
            _log.debug(
                "picked endpoint",
                extra={"request_id": exchange.request_id, "model": model, "endpoint": address,
                       "fallbacks": [e.address for e in result.endpoints[1:]],
                       "profile": result.profile, "scores": result.scores},
            )
        return Route(
            (destination.header, header_option("content-length", str(len(exchange.body)))),
            destination.metadata,
        )

    def _bodyless(self, exchange: Exchange, view: PoolView) -> Answer:
        models = self._models.answer(exchange.method, exchange.path, view.served_models, view.models_body)
        if models is None:
            raise bodyless(exchange.method, exchange.path)
        exchange.outcome = "models"
        return models

    def _shed_if_saturated(self, model: str, view: PoolView, subset: frozenset[str] | None) -> None:
        """429 when every endpoint that could have been picked (the model's, within the subset hint)
        is saturated. None of them at all is no saturation but a 503, which the scheduler answers."""
        assert self._saturation is not None
        serving = view.by_model.get(model, ())
        if subset is not None:
            serving = tuple(e for e in serving if e.address in subset)
        if serving and self._saturation.saturated(serving, time.monotonic()):
            raise RequestError(
                429, f"Every endpoint serving '{model}' is saturated; retry later.", "model", "saturated"
            )

    def _destination(self, primary: Endpoint, ranked: tuple[Endpoint, ...]) -> _Destination:
        address = primary.address
        if len(ranked) <= 1 or ranked[0] is not primary:
            destination = self._destinations.get(address)
            if destination is None:
                destination = self._destinations[address] = _Destination(address, address)
            return destination
        addresses = ",".join(e.address for e in ranked)
        destination = self._ranked_destinations.get(addresses)
        if destination is None:
            if len(self._ranked_destinations) >= _MAX_RANKED_DESTINATIONS:
                self._ranked_destinations.clear()
            destination = self._ranked_destinations[addresses] = _Destination(address, addresses)
        return destination

    def finish(self, exchange: Exchange) -> None:
        pick = exchange.state
        response = exchange.response
        if isinstance(pick, _Pick):
            self.in_flight.release(pick.address, pick.count)
            if self._outliers is not None and response.status:
                if response.connect_failed:
                    self._outliers.connect_failed(pick.address)
                else:
                    self._outliers.answered(pick.address)
            if response.status == 404 and self._refresher is not None and response.model_not_found():
                _log.info(
                    "backend does not serve the model any more; refreshing its models",
                    extra={"request_id": exchange.request_id, "endpoint": pick.address,
                           "model": exchange.model},
                )
                self._refresher.request_refresh(pick.address)
            self._answered(exchange, pick)
            usage = response.usage()
            if usage is not None:
                self._telemetry.tokens(exchange.model, usage.prompt_tokens, usage.completion_tokens)
                tenant = exchange.headers.get(TENANT_HEADER)
                if tenant is not None:
                    self._telemetry.tenant_tokens(
                        tenant, exchange.model, usage.prompt_tokens, usage.completion_tokens
                    )
        model = exchange.model
        known = self._datastore.view.known_models
        label = model if not model or model in known else OTHER_MODEL
        self._telemetry.request(label, exchange.outcome)
        if isinstance(pick, _Pick):
            status = response.status
            error = str(status) if status >= 400 else None
        else:
            status = pick if isinstance(pick, int) else 0
            error = None if exchange.outcome == "models" else exchange.outcome
        self._telemetry.answered(label, status, error)

    def _answered(self, exchange: Exchange, pick: _Pick) -> None:
        """A routed request's answer: its latency when its body was read, its model when checked."""
        response = exchange.response
        if response.first_body_at:
            now = time.perf_counter()
            self._telemetry.latency(exchange.model, response.first_body_at - pick.started, now - pick.started)
        if self._answers is not None:
            endpoint = self._datastore.get(pick.address)
            pod = endpoint.name if endpoint is not None else pick.address
            self._answers.check(exchange.model, pod, response, sampled=pick.checked)

    def wants_usage(self, exchange: Exchange) -> bool:
        # Behind a front door with API keys every answer's usage is counted for its tenant; an answer
        # sampled by the answer check is read for its model.
        pick = exchange.state
        return TENANT_HEADER in exchange.headers or (isinstance(pick, _Pick) and pick.checked)


def _subset_hint(metadata: Mapping[str, Struct] | None) -> frozenset[str] | None:
    """``envoy.lb.subset_hint`` → ``x-gateway-destination-endpoint-subset``: a list (or a
    comma-separated string) of ``host:port``, IPv6 hosts bracketed; None when the proxy sent no hint."""
    if not metadata or SUBSET_HINT_NAMESPACE not in metadata:
        return None
    fields = metadata[SUBSET_HINT_NAMESPACE].fields
    if SUBSET_HINT_KEY not in fields:
        return None
    value = fields[SUBSET_HINT_KEY]
    kind = value.WhichOneof("kind")
    if kind == "list_value":
        entries = [v.string_value.strip() for v in value.list_value.values]
    elif kind == "string_value":
        entries = [p.strip() for p in value.string_value.split(",")]
    else:
        return frozenset()
    return frozenset(_canonical_address(entry) for entry in entries if entry)


def _canonical_address(entry: str) -> str:
    """A hinted address spelled as the datastore keys it; IPv4 ``ip:port`` is already (the common,
    cheap case), an IPv6 one is re-spelled (``[fd00:0::1]:8000`` -> ``[fd00::1]:8000``). An entry that
    is no address is kept as it is, and so matches no endpoint."""
    if "[" not in entry:
        return entry
    try:
        host, port = split_host_port(entry)
    except ValueError:
        return entry
    return join_host_port(canonical_ip(host), port)
