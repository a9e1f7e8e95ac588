"""The OpenAI ``/v1/models`` format the gateway answers in: one model object, and the list of them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

OWNER = "gke-llm-gateway"


def model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": OWNER}


def model_body(model: str) -> bytes:
    """``GET /v1/models/{model}``: the one model object."""
    return json.dumps(model_object(model), separators=(",", ":")).encode()


def model_list_body(models: Iterable[str]) -> bytes:
    """``GET /v1/models``: ``{"object": "list", "data": [...]}`` in the order given."""
    data = [model_object(m) for m in models]
    return json.dumps({"object": "list", "data": data}, separators=(",", ":")).encode()
