"""``/v1/models`` answered by the gateway itself, in OpenAI format.

``GET`` (or ``HEAD``) ``/v1/models`` lists the models; ``/v1/models/{id}`` retrieves one (404 when
it is not listed). The list is rebuilt only when the model set changes, so every call returns
identical bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

from epp.extproc.errors import unknown_model
from epp.extproc.messages import immediate

MODELS_PATH = "/v1/models"
_MODEL_PREFIX = MODELS_PATH + "/"
_READ_METHODS = frozenset({"GET", "HEAD"})


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "gke-llm-gateway"}


def model_list_body(models: list[str]) -> bytes:
    data = [_model_object(m) for m in models]
    return json.dumps({"object": "list", "data": data}, separators=(",", ":")).encode()


class ModelList:
    """Caches the ImmediateResponse for ``GET /v1/models`` keyed by a version of the model set."""

    def __init__(self, models: Callable[[], list[str]]) -> None:
        self._models = models
        self._key: object = object()
        self._listed: list[str] = []
        self._ids: frozenset[str] = frozenset()
        self._response = immediate(200, model_list_body([]))

    def response(self, key: object) -> ProcessingResponse:
        if key != self._key:
            self._listed = self._models()
            self._ids = frozenset(self._listed)
            self._response = immediate(200, model_list_body(self._listed))
            self._key = key
        return self._response

    def answer(self, method: str, path: str, key: object) -> ProcessingResponse | None:
        """The answer to a bodyless request for the list or one model; None for any other request.

        Raises the 404 ``RequestError`` for a model that is not listed.
        """
        if method not in _READ_METHODS:
            return None
        if path == MODELS_PATH:
            return self.response(key)
        if not path.startswith(_MODEL_PREFIX):
            return None
        self.response(key)
        # Model ids hold slashes (google/gemma-2b-it), sent as they are or escaped.
        model = unquote(path[len(_MODEL_PREFIX):])
        if model not in self._ids:
            raise unknown_model(model, self._listed)
        return immediate(200, json.dumps(_model_object(model), separators=(",", ":")).encode())
