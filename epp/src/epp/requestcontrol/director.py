"""The EPP's director: what happens to a request between its body and its pick.

``route`` runs three steps, each a named extension point (``plugins``):

1. **parse**: the body's ``model`` and prompt; a model no pod serves or is configured for is a 404,
   an empty endpoint subset hint from the proxy a 503;
2. **admit**: every :class:`~epp.requestcontrol.plugins.Admitter` in turn may refuse (or hold) it,
   or narrow the endpoints it may go to;
3. **schedule**: the scheduler picks among the pool's routable endpoints; none is a 503. The pick's
   in-flight count is acquired (the datastore owns it) and the ``PreRequest`` plugins see it.

After the answer begins, ``wants_body`` asks the ``ResponseReader`` plugins whether to read its body,
and ``complete`` runs the ``ResponseComplete`` plugins once the exchange is over. The director holds
no transport: the EPP's stream handler (``epp.extproc.picker``) turns its pick into Envoy's answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.struct_pb2 import Struct

from epp.contract import SUBSET_HINT_KEY, SUBSET_HINT_NAMESPACE, join_host_port, split_host_port
from epp.datastore import Datastore, Endpoint, PoolView, canonical_ip
from epp.extproc.body import parse_body, require_model
from epp.refusals import RequestError, unknown_model
from epp.requestcontrol.plugins import (
    Admitter,
    EppExchange,
    PreRequest,
    ResponseComplete,
    ResponseReader,
)
from epp.scheduling.types import LLMRequest, SchedulingResult
from epp.telemetry import Telemetry

_log = logging.getLogger("epp.picker")


class Scheduler(Protocol):
    def schedule(
        self, request: LLMRequest, candidates: Sequence[Endpoint], *, explain: bool = False
    ) -> SchedulingResult: ...


@dataclass(frozen=True, slots=True)
class Plugins:
    """The director's plugins, by extension point, in the order they run."""

    admitters: tuple[Admitter, ...] = ()
    pre_request: tuple[PreRequest, ...] = ()
    readers: tuple[ResponseReader, ...] = ()
    complete: tuple[ResponseComplete, ...] = ()


class Director:
    """parse → admit → schedule for one pool's requests, and the hooks that follow each answer."""

    def __init__(
        self, datastore: Datastore, scheduler: Scheduler, telemetry: Telemetry, plugins: Plugins
    ) -> None:
        self._datastore = datastore
        self._scheduler = scheduler
        self._telemetry = telemetry
        self.plugins = plugins

    async def route(self, exchange: EppExchange, body: bytes) -> SchedulingResult:
        """The pick for ``exchange`` (whose body is ``body``), in-flight acquired; or a RequestError."""
        view = self._datastore.view
        request = self._parse(exchange, body, view)
        for admitter in self.plugins.admitters:
            narrowed = await admitter.admit(request, view)
            if narrowed is not None:
                request = exchange.state.request = narrowed
        return self._schedule(exchange, request)

    def _parse(self, exchange: EppExchange, body: bytes, view: PoolView) -> LLMRequest:
        parsed = parse_body(body)
        model = exchange.model = require_model(parsed)
        if model not in view.known_models:
            raise unknown_model(model, sorted(view.known_models))
        subset = subset_hint(exchange.metadata)
        if subset is not None and not subset:
            raise RequestError(503, "The gateway's endpoint subset hint is empty.", None, "empty_subset")
        request = exchange.state.request = LLMRequest(
            request_id=exchange.request_id, model=model, prompt=parsed.prompt, headers=exchange.headers,
            subset=subset, body_size=len(body), usage_reported=parsed.usage_reported,
            streamed=parsed.streamed, max_tokens=parsed.max_tokens,
        )
        return request

    def _schedule(self, exchange: EppExchange, request: LLMRequest) -> SchedulingResult:
        # The view again: an admitter may have waited, and the pool changed meanwhile.
        view = self._datastore.view
        started = time.perf_counter()
        debug = _log.isEnabledFor(logging.DEBUG)
        result = self._scheduler.schedule(request, view.endpoints, explain=debug)
        self._telemetry.scheduling_seconds.observe(time.perf_counter() - started)
        endpoint = result.endpoint
        if endpoint is None:
            where = " in the gateway's subset hint" if result.rejected_by == "subset" else ""
            raise RequestError(
                503, f"No ready endpoint{where} serves the model '{request.model}' right now.", "model",
                "no_endpoint",
            )
        state = exchange.state
        state.address = endpoint.address
        state.started = started
        state.count = self._datastore.acquire(endpoint.address)
        state.cycle = result.cycle
        exchange.outcome = "routed"
        for plugin in self.plugins.pre_request:
            plugin.pre_request(exchange, endpoint)
        if debug:
            _log.debug(
                "picked endpoint",
                extra={"request_id": exchange.request_id, "model": request.model,
                       "endpoint": endpoint.address,
                       "fallbacks": [e.address for e in result.endpoints[1:]],
                       "profile": result.profile, "scores": result.scores},
            )
        return result

    def wants_body(self, exchange: EppExchange) -> bool:
        return any(reader.wants_body(exchange) for reader in self.plugins.readers)

    def wants_more(self, exchange: EppExchange) -> bool:
        return any(reader.wants_more(exchange) for reader in self.plugins.readers)

    def complete(self, exchange: EppExchange) -> None:
        for plugin in self.plugins.complete:
            try:
                plugin.response_complete(exchange)
            except Exception:
                _log.exception(
                    "a response-complete plugin failed",
                    extra={"request_id": exchange.request_id, "plugin": type(plugin).__name__},
                )


def subset_hint(metadata: Mapping[str, Struct] | None) -> frozenset[str] | None:
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
