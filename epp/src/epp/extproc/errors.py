"""OpenAI-style JSON errors, answered by Envoy as ImmediateResponses.

The body is :func:`epp.contract.error_body` (``{"error": {"message", "type", "param", "code"}}``),
so OpenAI clients surface the message and every component of the gateway spells it alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

from epp.contract import NOT_FOUND_MESSAGE, echoed, error_body
from epp.extproc.messages import immediate


@dataclass(frozen=True, slots=True)
class RequestError(Exception):
    """A request the servers refuse: its HTTP status, a message for the client and the offending param."""

    status: int
    message: str
    param: str | None = None
    # Short machine-readable outcome for metrics and logs, e.g. "invalid_json".
    reason: str = "error"

    def body(self) -> bytes:
        return error_body(self.status, self.message, self.param)

    def response(self) -> ProcessingResponse:
        return immediate(self.status, self.body())


def unknown_model(model: str, served: list[str]) -> RequestError:
    listed = ", ".join(served) if served else "none"
    return RequestError(
        404, f"The model '{echoed(model)}' does not exist. Models served: {listed}.", "model", "unknown_model"
    )


def bodyless(method: str, path: str) -> RequestError:
    """The answer to a request without a body that is no model list read, alike in both routing
    modes: a read (GET, HEAD) of anything else is a 404, any other method needs a JSON body (400)."""
    if method in ("GET", "HEAD"):
        return RequestError(404, NOT_FOUND_MESSAGE, None, "not_found")
    return RequestError(
        400, f"{echoed(method)} {echoed(path)} has no body; send a JSON body with a 'model'.", None, "no_body"
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
