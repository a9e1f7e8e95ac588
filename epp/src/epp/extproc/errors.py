"""The one place a refusal becomes an answer: an OpenAI-style JSON ImmediateResponse.

Whatever refuses a request (the body parser, the key check, admission, the scheduler) raises a plain
:class:`epp.refusals.RequestError`; the stream driver hands it to :func:`refusal_response`. Its body
is :func:`epp.contract.error_body` (``{"error": {"message", "type", "param", "code"}}``), so OpenAI
clients surface the message and every component of the gateway spells it alike.
"""

from __future__ import annotations

from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

from epp.contract import REQUEST_ID_HEADER
from epp.extproc.messages import immediate
from epp.refusals import (
    RequestError,
    body_too_large,
    bodyless,
    internal_error,
    missing_model,
    unknown_model,
)

__all__ = [
    "RequestError",
    "body_too_large",
    "bodyless",
    "internal_error",
    "missing_model",
    "refusal_response",
    "unknown_model",
]

# Refusals repeat (the 401 of every request without a key, the 404 of one unknown model): their
# answers are built once. Bounded, since messages quote what clients send.
_MAX_KEPT = 512
_kept: dict[tuple[int, str, str | None, tuple[tuple[str, str], ...]], ProcessingResponse] = {}


def refusal_response(error: RequestError, request_id: str = "") -> ProcessingResponse:
    """``error`` as the ImmediateResponse Envoy sends the client; with ``request_id``, the answer
    carries it in ``x-request-id``."""
    headers = error.response_headers()
    if request_id:
        return immediate(error.status, error.body(), headers=(*headers, (REQUEST_ID_HEADER, request_id)))
    key = (error.status, error.message, error.param, headers)
    response = _kept.get(key)
    if response is None:
        if len(_kept) >= _MAX_KEPT:
            _kept.clear()
        response = _kept[key] = immediate(error.status, error.body(), headers=headers)
    return response
