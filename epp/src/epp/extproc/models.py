"""``GET /v1/models`` answered by the gateway itself, in OpenAI list format.

The answer is rebuilt only when the model set changes, so every call returns identical bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

from epp.extproc.messages import immediate

MODELS_PATH = "/v1/models"


def model_list_body(models: list[str]) -> bytes:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "gke-llm-gateway"} for m in models]
    return json.dumps({"object": "list", "data": data}, separators=(",", ":")).encode()


class ModelList:
    """Caches the ImmediateResponse for ``GET /v1/models`` keyed by a version of the model set."""

    def __init__(self, models: Callable[[], list[str]]) -> None:
        self._models = models
        self._key: object = object()
        self._response = immediate(200, model_list_body([]))

    def response(self, key: object) -> ProcessingResponse:
        if key != self._key:
            self._response = immediate(200, model_list_body(self._models()))
            self._key = key
        return self._response
