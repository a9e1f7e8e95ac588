"""OpenAI-style JSON errors, answered by Envoy as ImmediateResponses.

Body: ``{"error": {"message", "type", "param", "code"}}`` so OpenAI clients surface the message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

from epp.extproc.messages import immediate

_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
}


@dataclass(frozen=True, slots=True)
class RequestError(Exception):
    """A request the servers refuse: its HTTP status, a message for the client and the offending param."""

    status: int
    message: str
    param: str | None = None
    # Short machine-readable outcome for metrics and logs, e.g. "invalid_json".
    reason: str = "error"

    def body(self) -> bytes:
        error = {
            "message": self.message,
            "type": _TYPES.get(self.status, "api_error"),
            "param": self.param,
            "code": self.status,
        }
        return json.dumps({"error": error}, separators=(",", ":")).encode()

    def response(self) -> ProcessingResponse:
        return immediate(self.status, self.body())


def unknown_model(model: str, served: list[str]) -> RequestError:
    listed = ", ".join(served) if served else "none"
    return RequestError(
        404, f"The model '{model}' does not exist. Models served: {listed}.", "model", "unknown_model"
    )


def missing_model() -> RequestError:
    return RequestError(
        400, "The request body has no 'model' field (a non-empty string).", "model", "no_model"
    )


def internal_error() -> RequestError:
    """A bug met while deciding on a request: the client gets a 500, not a broken stream."""
    return RequestError(
        500, "The gateway failed while routing this request; the failure is logged.", None, "internal_error"
    )


def body_too_large(limit: int) -> RequestError:
    return RequestError(413, f"The request body exceeds {limit} bytes.", None, "body_too_large")
