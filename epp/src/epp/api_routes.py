"""The API the gateway serves: the one allow-list of method + path, for every layer that enforces it.

A request reaches a model server only as ``POST`` to one of the OpenAI endpoints the pods serve
(``/v1/completions`` and ``/v1/chat/completions``; ``/v1/embeddings`` and ``/v1/responses`` only when
configured, for pods that serve them). ``GET``/``HEAD`` ``/v1/models`` and ``/v1/models/{id}`` are
always answered by the gateway itself, whatever the body, and never forwarded. Anything else is
refused by the gateway: 405 (with ``Allow``) for a served path under another method, 404 for any other
path. vLLM's own routes (``/v1/load_lora_adapter``, ``/metrics``, ``/health``, ...) are never
reachable through it.

The same ``ApiRoutes`` drives the BBR's and the EPP's checks on the request headers
(``epp.api_screen``), the one box's Envoy routes (``onebox.envoy.bootstrap``) and the GKE HTTPRoute
matches (``components.gateway``). Paths are compared exactly, after the proxy's normalisation (Envoy:
``normalize_path``, ``merge_slashes``, escaped slashes rejected): ``/v1/../metrics``, ``/v1//models``
or ``/v1/chat/completions;x=1`` match nothing. The query string is not part of the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

from epp.contract import API_PREFIX, echoed

ApiEndpoint = Literal["completions", "chat/completions", "embeddings", "responses"]
API_ENDPOINTS: Final[tuple[ApiEndpoint, ...]] = get_args(ApiEndpoint)
# What vLLM serves for a generative model and the simulator serves too; embeddings need an embedding
# model and responses a recent vLLM, so they are opt-in.
DEFAULT_API_ENDPOINTS: Final[tuple[ApiEndpoint, ...]] = ("completions", "chat/completions")

# The forwarded paths whose request says how long its answer may be (``max_tokens``): the answers the
# EPP may follow to their end (``epp.requestcontrol.answer_ends``).
MAX_TOKENS_PATHS: Final = frozenset(API_PREFIX + endpoint for endpoint in DEFAULT_API_ENDPOINTS)

MODELS_PATH: Final = "/v1/models"
MODEL_PATH_PREFIX: Final = MODELS_PATH + "/"
FORWARD_METHOD: Final = "POST"
READ_METHODS: Final = ("GET", "HEAD")

# What a request is, by its method and path.
RouteKind = Literal["forward", "models", "method_not_allowed", "not_found"]

# Content codings a request body may carry: the BBR reads the body as it is, so a pod must get it as is.
IDENTITY_ENCODINGS: Final = frozenset({"", "identity"})


@dataclass(frozen=True, slots=True)
class ApiRoutes:
    """The endpoints forwarded to model servers (``POST /v1/<endpoint>``) besides the gateway's own
    model list."""

    endpoints: tuple[ApiEndpoint, ...] = DEFAULT_API_ENDPOINTS

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("the gateway must serve at least one API endpoint")
        unknown = [e for e in self.endpoints if e not in API_ENDPOINTS]
        if unknown:
            raise ValueError(f"unknown API endpoints {unknown}; known: {', '.join(API_ENDPOINTS)}")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError(f"API endpoints repeat: {list(self.endpoints)}")

    @property
    def forwarded_paths(self) -> tuple[str, ...]:
        """The paths a ``POST`` is forwarded on, e.g. ``/v1/chat/completions``."""
        return tuple(API_PREFIX + endpoint for endpoint in self.endpoints)

    def kind(self, method: str, path: str) -> RouteKind:
        """What ``method path`` (the path without its query) is to the gateway."""
        if path in self.forwarded_paths:
            return "forward" if method == FORWARD_METHOD else "method_not_allowed"
        if is_models_path(path):
            return "models" if method in READ_METHODS else "method_not_allowed"
        return "not_found"

    @staticmethod
    def allowed_methods(path: str) -> tuple[str, ...]:
        """The methods a served path takes (its 405's ``Allow``)."""
        return READ_METHODS if is_models_path(path) else (FORWARD_METHOD,)

    @property
    def not_found_message(self) -> str:
        served = [f"{FORWARD_METHOD} {path}" for path in self.forwarded_paths] + [f"GET {MODELS_PATH}"]
        return f"Not found: the gateway serves {', '.join(served[:-1])} and {served[-1]}."

    @staticmethod
    def method_not_allowed_message(path: str) -> str:
        """The same for every refused method, so the proxy's static answer and the BBR's agree."""
        allowed = ", ".join(ApiRoutes.allowed_methods(path))
        shown = MODEL_PATH_PREFIX + "{id}" if path.startswith(MODEL_PATH_PREFIX) else echoed(path)
        return f"Method not allowed: {shown} takes {allowed} only."


DEFAULT_ROUTES: Final = ApiRoutes()


def is_models_path(path: str) -> bool:
    """``/v1/models`` or ``/v1/models/{id}`` (a model id may hold slashes)."""
    return path == MODELS_PATH or path.startswith(MODEL_PATH_PREFIX)


def unsupported_encoding(content_encoding: str | None) -> bool:
    """Whether a request body's ``Content-Encoding`` is one the gateway refuses (415): any but identity."""
    return content_encoding is not None and content_encoding.strip().lower() not in IDENTITY_ENCODINGS
