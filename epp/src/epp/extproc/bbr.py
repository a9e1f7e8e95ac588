"""The Body-Based Router servicer: copies the body's ``model`` into routing headers.

Sets ``x-gateway-model-name`` and ``x-gateway-base-model-name`` (a LoRA adapter resolves to its
base model) and clears the route cache so Envoy routes on them. Given the served models (to which
the configured adapters are added) it is the gateway's front door for ``/v1/``: a request without a
model is a 400, an unknown model a 404 listing the served ones, ``GET /v1/models`` is answered with
that list and any other request without a body as the EPP answers it (``errors.bodyless``); paths
outside ``/v1/`` pass, for the proxy's routes to refuse. Without served models it behaves as
upstream BBR: a request without a model, or without a body, passes through untouched.

Given a ``KeyCheck`` it is closed: every request needs a key (checked on the headers, before any
body is read), may name only the key's models and is counted against the key's limit, and
``GET /v1/models`` lists only the key's models (and is not counted against the limit). What it
passes on carries the tenant's name and no key header; when open it only removes a tenant header a
client may have sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.core.v3.base_pb2 import HeaderValueOption

from epp import api_screen
from epp.api_routes import DEFAULT_ROUTES, READ_METHODS, ApiRoutes, is_models_path
from epp.auth.check import KeyCheck
from epp.auth.labels import key_name
from epp.auth.store import Tenant
from epp.contract import (
    API_PREFIX,
    BASE_MODEL_HEADER,
    CLIENT_KEY_HEADERS,
    MODEL_HEADER,
    PRIORITY_HEADER,
    TENANT_HEADER,
)
from epp.extproc.body import parse_body
from epp.extproc.decision import PASS, Decision, Route
from epp.extproc.errors import bodyless, missing_model, unknown_model
from epp.extproc.messages import header_option
from epp.extproc.model_scan import ModelScanner
from epp.extproc.models import ModelList
from epp.extproc.stream import DEFAULT_MAX_BODY_BYTES, Exchange
from epp.model_list import model_list_body
from epp.telemetry import OTHER_MODEL, Telemetry

# What answers GET /v1/models for a key: its list, the listed models and their body.
_KeyModels = tuple[ModelList, tuple[str, ...], bytes]


class BbrState:
    """The BBR's per-request state: the caller's tenant, once its key is checked (None when open),
    and, while a body arrives in several chunks, the scanner looking for its model."""

    __slots__ = ("scanner", "tenant")

    def __init__(self) -> None:
        self.tenant: Tenant | None = None
        self.scanner: ModelScanner | None = None


BbrExchange = Exchange[BbrState]


class BodyBasedRouter:
    """The BBR's :class:`~epp.extproc.stream.Handler`."""

    # It routes on the request alone: its stream ends once the request is answered.
    follows_responses = False

    def __init__(
        self,
        telemetry: Telemetry,
        *,
        served_models: Sequence[str] | None = None,
        adapters: Mapping[str, str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        keys: KeyCheck | None = None,
        routes: ApiRoutes | None = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self._telemetry = telemetry
        self._keys = keys
        # The tenant header passed on behind the front door, built once per name and key list.
        self._forwarded: dict[str, tuple[HeaderValueOption, HeaderValueOption]] = {}
        self._forwarded_version = -1
        # A front door serves only the API's allow-list (epp.api_routes); an upstream-style BBR, all.
        front = served_models is not None or keys is not None
        self._routes = routes if routes is not None else DEFAULT_ROUTES if front else None
        # Per set of models a key may use (None: all), its /v1/models; rebuilt when the keys change.
        self._key_models: dict[frozenset[str] | None, _KeyModels | None] = {}
        self._key_models_version = -1
        self._adapters = dict(adapters or {})
        self._served: frozenset[str] | None = None
        self._listed: tuple[str, ...] = ()
        if served_models is not None:
            # A configured adapter is served (by its base model's pods) even when not listed.
            self._listed = tuple(sorted(set(served_models).union(self._adapters)))
            self._served = frozenset(self._listed)
        self._listed_body = model_list_body(self._listed)
        self._models = ModelList()
        # Models counted under their own name in metrics; any other is "other".
        self._labelled = self._served if self._served is not None else frozenset(
            self._adapters.keys() | set(self._adapters.values())
        )

    def base_model(self, model: str) -> str:
        return self._adapters.get(model, model)

    def new_state(self) -> BbrState:
        return BbrState()

    def on_request_headers(self, exchange: BbrExchange) -> None:
        """The key, its rate limit and the route are decided here, before any body byte is kept: every
        request counts against the key's limit (refused ones included), but a read of the model list."""
        if self._keys is not None:
            tenant = exchange.state.tenant = self._keys.authenticate(exchange.headers)
            if not (exchange.method in READ_METHODS and is_models_path(exchange.path)):
                self._keys.admit(tenant)
        if self._routes is not None:  # 404/405/415 on the headers (epp.api_screen)
            api_screen.screen_route(self._routes, exchange.method, exchange.path, exchange.headers)

    def on_partial_body(self, exchange: BbrExchange, chunk: bytes) -> None:
        """Refuse a model this front door will not route as soon as the body names it."""
        if self._served is None and exchange.state.tenant is None:
            return
        state = exchange.state
        scanner = state.scanner
        if scanner is None:
            scanner = state.scanner = ModelScanner()
        elif scanner.done:
            return
        model = scanner.feed(chunk)
        if model is not None:
            self._check_model(model, state.tenant)

    def _check_model(self, model: str, tenant: Tenant | None) -> None:
        """Refuse ``model`` if this front door does not route it for ``tenant``."""
        if self._served is not None and model not in self._served:
            # With a key, the models listed are those it may use: never another tenant's.
            listed = self._listed if tenant is None else tuple(m for m in self._listed if tenant.allows(m))
            raise unknown_model(model, list(listed))
        if tenant is not None:
            assert self._keys is not None
            self._keys.authorize(tenant, model, self._listed)

    def on_response_headers(self, exchange: BbrExchange) -> bool:
        return False

    def on_response_body(self, exchange: BbrExchange) -> bool:
        return False

    def _forwarded_tenant(self, tenant: Tenant) -> tuple[HeaderValueOption, HeaderValueOption]:
        """The headers naming ``tenant`` and its priority to what runs behind the front door
        (overwriting whatever a client sent in them)."""
        assert self._keys is not None
        version = self._keys.store.version
        if self._forwarded_version != version:
            self._forwarded.clear()
            self._forwarded_version = version
        options = self._forwarded.get(tenant.name)
        if options is None:
            options = self._forwarded[tenant.name] = (
                header_option(TENANT_HEADER, tenant.name),
                header_option(PRIORITY_HEADER, str(tenant.priority)),
            )
        return options

    def _models_for(self, tenant: Tenant) -> _KeyModels | None:
        """What answers ``GET /v1/models`` for ``tenant``: the served models it may use (without a
        served list, the models it is restricted to); None to let the request through."""
        assert self._keys is not None
        if self._key_models_version != self._keys.store.version:
            self._key_models.clear()
            self._key_models_version = self._keys.store.version
        allowed = tenant.models
        if allowed not in self._key_models:
            listed: tuple[str, ...] | None
            if self._served is None:
                listed = tuple(sorted(allowed)) if allowed is not None else None
            else:
                listed = tuple(m for m in self._listed if allowed is None or m in allowed)
            key_models = None if listed is None else (ModelList(), listed, model_list_body(listed))
            self._key_models[allowed] = key_models
        return self._key_models[allowed]

    def _passthrough(self, exchange: BbrExchange, tenant: Tenant | None) -> Decision:
        exchange.outcome = "passthrough"
        if tenant is not None:
            return Route(self._forwarded_tenant(tenant), remove=CLIENT_KEY_HEADERS)
        if TENANT_HEADER in exchange.headers:
            return Route((), remove=(TENANT_HEADER,))
        return PASS

    async def decide(self, exchange: BbrExchange) -> Decision:
        tenant = exchange.state.tenant
        front_door = self._served is not None
        outside = not exchange.path.startswith(API_PREFIX)
        if (front_door and outside) or (not front_door and exchange.body is None and tenant is None):
            # Nothing to route on: the proxy's routes decide (a routing miss is the proxy's 404).
            return self._passthrough(exchange, tenant)
        # api_routes (issue 20): GET /v1/models* is answered here whatever its body, never forwarded.
        if exchange.body is None or (self._routes is not None and is_models_path(exchange.path)):
            models = None
            if tenant is not None:
                key_models = self._models_for(tenant)
                if key_models is not None:
                    listing, listed, body = key_models
                    models = listing.answer(exchange.method, exchange.path, listed, body)
            elif front_door:
                models = self._models.answer(exchange.method, exchange.path, self._listed, self._listed_body)
            if models is not None:
                exchange.outcome = "models"
                return models
            if front_door:
                raise bodyless(exchange.method, exchange.path)
            return self._passthrough(exchange, tenant)
        parsed = parse_body(exchange.body)
        model = parsed.model
        if model is None:
            if front_door:
                raise missing_model()
            return self._passthrough(exchange, tenant)
        exchange.model = model
        self._check_model(model, tenant)
        headers: tuple[HeaderValueOption, ...] = (
            header_option(MODEL_HEADER, model),
            header_option(BASE_MODEL_HEADER, self.base_model(model)),
            header_option("content-length", str(len(exchange.body))),
        )
        remove: tuple[str, ...] = ()
        if tenant is not None:
            headers += self._forwarded_tenant(tenant)
            remove = CLIENT_KEY_HEADERS
        elif TENANT_HEADER in exchange.headers:
            remove = (TENANT_HEADER,)
        exchange.outcome = "routed"
        return Route(headers, remove=remove)

    def on_complete(self, exchange: BbrExchange) -> None:
        model = exchange.model
        label = model if not model or model in self._labelled else OTHER_MODEL
        self._telemetry.request(label, exchange.outcome)
        if self._keys is not None:
            name = key_name(exchange.state.tenant, exchange.outcome)
            self._telemetry.key_request(name, label, exchange.outcome)

