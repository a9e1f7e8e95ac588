"""The Endpoint Picker's stream handler: each request goes to a ready endpoint that serves its model.

The :class:`~epp.requestcontrol.director.Director` decides (parse → admit → schedule, then the
response hooks); this handler turns its pick into Envoy's answer. Endpoints out of rotation
(``Endpoint.ejected``) are not in the pool's view, so they are never picked.

``GET /v1/models`` is answered here with the union of the ready endpoints' models (and
``GET /v1/models/{id}`` with one of them).

With a picker ranking several endpoints (``maxNumOfEndpoints`` > 1) the ``envoy.lb`` metadata lists
them best first, comma-separated, as the Endpoint Picker Protocol allows, for a proxy that falls
back along the list. The ``x-gateway-destination-endpoint`` header names the first only: Envoy's
ORIGINAL_DST cluster (the one box's gateway) reads one address from it and fails on a list.
"""

from __future__ import annotations

from epp import api_screen
from epp.answer_check import AnswerCheck
from epp.api_routes import DEFAULT_ROUTES, ApiRoutes, is_models_path
from epp.contract import DESTINATION_HEADER
from epp.datastore import Datastore, DatastoreEvent, Endpoint, EndpointRemoved
from epp.extproc.decision import Answer, Decision, Route
from epp.extproc.errors import bodyless
from epp.extproc.messages import destination_metadata, header_option
from epp.extproc.models import ModelList
from epp.extproc.stream import DEFAULT_MAX_BODY_BYTES
from epp.requestcontrol.cached_tokens import CachedTokensFeedback
from epp.requestcontrol.director import Director, Plugins, Scheduler
from epp.requestcontrol.ejection_evidence import OutlierObserver
from epp.requestcontrol.model_refresh import ModelRefresher
from epp.requestcontrol.plugins import EppExchange, EppState
from epp.requestcontrol.saturation_shedding import SaturationDetector
from epp.requestcontrol.standard import standard_plugins
from epp.telemetry import Telemetry

# Rankings seen are kept prebuilt up to this many (a big pool has many orders of its endpoints).
_MAX_RANKED_DESTINATIONS = 4096


class _Destination:
    """Prebuilt per-destination pieces of the routing answer."""

    __slots__ = ("header", "metadata")

    def __init__(self, primary: str, ranked: str) -> None:
        self.header = header_option(DESTINATION_HEADER, primary)
        self.metadata = destination_metadata(ranked)


class EndpointPicker:
    """The EPP's :class:`~epp.extproc.stream.Handler`: the director's picks as Envoy's answers."""

    follows_responses = True

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
        plugins: Plugins | None = None,
        routes: ApiRoutes = DEFAULT_ROUTES,
        answer_check: AnswerCheck | None = None,
        cached_tokens: CachedTokensFeedback | None = None,
        follow_answers_up_to: int = 0,
    ) -> None:
        """``plugins``: request-control plugins beyond the standard ones (they run after them);
        ``routes``: the API endpoints forwarded to pods (anything else is refused on its headers);
        ``answer_check``: check a sample of answers for the model that answered; ``cached_tokens``:
        settle the prefix index's predicted hits by the cached tokens the pods report;
        ``follow_answers_up_to``: follow streams of at most this many tokens to their end, which then
        comes off the pod's load (0: none; an answer not streamed comes off at its headers)."""
        self.max_body_bytes = max_body_bytes
        self._routes = routes
        self._datastore = datastore
        self.director = Director(
            datastore, scheduler, telemetry,
            standard_plugins(datastore, telemetry, saturation=saturation,
                             shed_on_saturation=shed_on_saturation, refresher=refresher, outliers=outliers,
                             answer_check=answer_check, cached_tokens=cached_tokens,
                             follow_answers_up_to=follow_answers_up_to, extra=plugins),
        )
        self._models = ModelList()
        # Prebuilt routing answers: by address, and by the ranked addresses when fallbacks are sent.
        self._destinations: dict[str, _Destination] = {}
        self._ranked_destinations: dict[str, _Destination] = {}
        datastore.subscribe(self._on_change)

    def _on_change(self, event: DatastoreEvent) -> None:
        if isinstance(event, EndpointRemoved):
            self._destinations.pop(event.endpoint.address, None)
            self._ranked_destinations.clear()

    # -- the Handler protocol ---------------------------------------------------------------------
    def new_state(self) -> EppState:
        return EppState()

    def on_request_headers(self, exchange: EppExchange) -> None:
        """404/405/415 for what the API's allow-list does not serve (``epp.api_screen``)."""
        api_screen.screen_route(self._routes, exchange.method, exchange.path, exchange.headers)

    def on_partial_body(self, exchange: EppExchange, chunk: bytes) -> None:
        return None

    async def decide(self, exchange: EppExchange) -> Decision:
        body = exchange.body
        # GET /v1/models* is answered here whatever its body, never forwarded.
        if body is None or is_models_path(exchange.path):
            return self._bodyless(exchange)
        result = await self.director.route(exchange, body)
        assert result.endpoint is not None  # the director refuses a request it cannot place
        destination = self._destination(result.endpoint, result.endpoints)
        return Route(
            (destination.header, header_option("content-length", str(len(body)))),
            destination.metadata,
        )

    def on_response_headers(self, exchange: EppExchange) -> bool:
        return self.director.wants_body(exchange)

    def on_response_body(self, exchange: EppExchange) -> bool:
        return self.director.wants_more(exchange)

    def on_complete(self, exchange: EppExchange) -> None:
        self.director.complete(exchange)

    # -- pieces -----------------------------------------------------------------------------------
    def _bodyless(self, exchange: EppExchange) -> Answer:
        view = self._datastore.view
        models = self._models.answer(exchange.method, exchange.path, view.served_models, view.models_body)
        if models is None:
            raise bodyless(exchange.method, exchange.path)
        exchange.outcome = "models"
        return models

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
