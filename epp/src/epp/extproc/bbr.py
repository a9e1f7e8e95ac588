"""The Body-Based Router servicer: copies the body's ``model`` into routing headers.

Sets ``x-gateway-model-name`` and ``x-gateway-base-model-name`` (a LoRA adapter resolves to its
base model) and clears the route cache so Envoy routes on them. Given the served models (to which
the configured adapters are added) it is the gateway's front door for ``/v1/``: a request without a
model is a 400, an unknown model a 404 listing the served ones, ``GET /v1/models`` is answered with
that list and any other request without a body as the EPP answers it (``errors.bodyless``); paths
outside ``/v1/`` pass, for the proxy's routes to refuse. Without served models it behaves as
upstream BBR: a request without a model, or without a body, passes through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from epp.contract import API_PREFIX, BASE_MODEL_HEADER, MODEL_HEADER
from epp.extproc.body import parse_body
from epp.extproc.decision import PASS, Decision, Route
from epp.extproc.errors import bodyless, missing_model, unknown_model
from epp.extproc.messages import header_option
from epp.extproc.models import ModelList
from epp.extproc.stream import DEFAULT_MAX_BODY_BYTES, Exchange, ExtProcServicer
from epp.model_list import model_list_body
from epp.telemetry import OTHER_MODEL, Telemetry


class BodyBasedRouter(ExtProcServicer):
    # It routes on the request alone: its stream ends once the request is answered.
    follows_responses = False

    def __init__(
        self,
        telemetry: Telemetry,
        *,
        served_models: Sequence[str] | None = None,
        adapters: Mapping[str, str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        super().__init__(max_body_bytes=max_body_bytes)
        self._telemetry = telemetry
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

    def decide(self, exchange: Exchange) -> Decision:
        front_door = self._served is not None
        outside = not exchange.path.startswith(API_PREFIX)
        if (front_door and outside) or (not front_door and exchange.body is None):
            # Nothing to route on: the proxy's routes decide (a routing miss is the proxy's 404).
            exchange.outcome = "passthrough"
            return PASS
        if exchange.body is None:
            models = self._models.answer(exchange.method, exchange.path, self._listed, self._listed_body)
            if models is None:
                raise bodyless(exchange.method, exchange.path)
            exchange.outcome = "models"
            return models
        parsed = parse_body(exchange.body)
        model = parsed.model
        if model is None:
            if front_door:
                raise missing_model()
            exchange.outcome = "passthrough"
            return PASS
        exchange.model = model
        if self._served is not None and model not in self._served:
            raise unknown_model(model, list(self._listed))
        exchange.outcome = "routed"
        return Route(
            (
                header_option(MODEL_HEADER, model),
                header_option(BASE_MODEL_HEADER, self.base_model(model)),
                header_option("content-length", str(len(exchange.body))),
            )
        )

    def finish(self, exchange: Exchange) -> None:
        model = exchange.model
        label = model if not model or model in self._labelled else OTHER_MODEL
        self._telemetry.request(label, exchange.outcome)
