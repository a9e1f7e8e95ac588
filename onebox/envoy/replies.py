"""Every answer Envoy makes itself speaks OpenAI-style JSON (``local_reply_config``).

Envoy answers on its own when a request cannot go on: an ext_proc call failed (the BBR or an EPP
down, refusing, resetting or too slow), a circuit breaker tripped, a pod could not be reached or
went silent, a client was too slow. Unmapped, those answers are an empty body or a line of text.
Each is mapped here to the right status and ``epp.contract.error_body`` (its ``type`` from
``ERROR_TYPES``); overload and unavailability also carry ``Retry-After``.

Only Envoy's own replies are mapped: answers from pods are not local replies and pass unchanged,
and the BBR's and EPPs' immediate responses (already JSON, with their content-type) are left
as they are, gaining only a ``Retry-After`` when they are a 429 or 503 without one.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from epp.contract import (
    ERROR_TYPES,
    UPSTREAM_CONNECT_FAILURE,
    UPSTREAM_FAILURE_HEADER,
    UPSTREAM_RESET,
    UPSTREAM_SILENT,
    error_body,
)

from onebox.envoy.limits import GatewayLimits, GatewayTimeouts

_CEL = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
# Envoy sets a reply's content-type after the mapping, from its body: at mapping time only replies
# whose producer set one (an ext_proc immediate response, the JSON 404 route) have it.
_ENVOY_MADE = "!('content-type' in response.headers)"
HEALTH_PATH = "/health"

# Response flags (Envoy access-log names) and what they mean for the client.
_OVERFLOW = ["UO"]  # a circuit breaker's budget is used up
_POD_SILENT = ["UT"]  # the pod went silent (the per-try idle timeout)
_STREAM_IDLE = ["SI"]  # nothing in either direction for the stream idle timeout
_CONNECT_FAILED = ["UF"]  # the connection to the pod failed: nothing was sent
_UNREACHABLE = ["URX", "UC", "UR", "UPE"]  # reset, or broke the protocol
_NO_UPSTREAM = ["UH", "NR", "NC"]  # no healthy host, no route, no cluster


def _cel(expression: str) -> dict[str, Any]:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {"@type": _CEL, "expression": expression},
        }
    }


def _flags(flags: list[str]) -> dict[str, Any]:
    return {"response_flag_filter": {"flags": flags}}


def _status(code: int) -> dict[str, Any]:
    value = {"default_value": code, "runtime_key": "onebox.local_reply.status"}
    return {"status_code_filter": {"comparison": {"op": "EQ", "value": value}}}


def _retry_after(limits: GatewayLimits) -> list[dict[str, Any]]:
    return [
        {
            "header": {"key": "retry-after", "value": str(limits.retry_after_seconds)},
            "append_action": "ADD_IF_ABSENT",
        }
    ]


def _json(status: int, message: str) -> dict[str, Any]:
    # Envoy reads the body as a format string: the contract's bytes, with no '%' in the message.
    assert "%" not in message
    return {
        "text_format_source": {"inline_string": error_body(status, message).decode()},
        "content_type": "application/json",
    }


def _mapper(
    match: dict[str, Any], status: int, message: str, headers: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    mapper: dict[str, Any] = {
        "filter": match, "status_code": status, "body_format_override": _json(status, message)
    }
    if headers:
        mapper["headers_to_add"] = headers
    return mapper


def _failure(kind: str) -> list[dict[str, Any]]:
    """The header that tells the EPP on the response path that the gateway answered for the pod."""
    header = {"key": UPSTREAM_FAILURE_HEADER, "value": kind}
    return [{"header": header, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]


def _and(*filters: dict[str, Any]) -> dict[str, Any]:
    return {"and_filter": {"filters": list(filters)}}


def local_reply_config(limits: GatewayLimits, timeouts: GatewayTimeouts) -> dict[str, Any]:
    """The mappers, most specific first (Envoy applies the first that matches)."""
    retry = _retry_after(limits)
    mappers = [
        _mapper(
            _and(_cel(_ENVOY_MADE), _cel(f"request.path == '{HEALTH_PATH}'"), _status(503)), 503,
            "The gateway cannot route: no pool has a ready endpoint picker and model server.", retry,
        ),
        _mapper(
            _cel(f"{_ENVOY_MADE} && response.code_details.startsWith('ext_proc')"), 503,
            "The gateway's request router (the body-based router or this model's endpoint picker) did "
            "not answer; retry shortly.", retry,
        ),
        _mapper(
            _flags(_OVERFLOW), 503,
            f"The gateway is at capacity ({limits.max_requests} requests in flight); retry shortly.", retry,
        ),
        _mapper(
            _flags(_POD_SILENT), 504,
            f"The model server sent nothing for {timeouts.upstream_idle:g} s; the request was ended.",
            _failure(UPSTREAM_SILENT),
        ),
        _mapper(
            _flags(_STREAM_IDLE), 504,
            f"Nothing was sent or received on this request for {timeouts.stream_idle:g} s; it was ended.",
        ),
        # The picking EPP reads the header on the response path and ejects a pod refusing connections.
        # Envoy cannot retry such a request on another pod itself: ORIGINAL_DST takes the host from
        # the request's destination header on every try, so a retry meets the same pod again.
        _mapper(
            _flags(_CONNECT_FAILED), 502,
            "The gateway could not connect to the model server picked for this request; nothing was sent.",
            _failure(UPSTREAM_CONNECT_FAILURE),
        ),
        _mapper(
            _flags(_UNREACHABLE), 502,
            "The gateway could not reach the model server picked for this request.", _failure(UPSTREAM_RESET),
        ),
        _mapper(
            _flags(_NO_UPSTREAM), 503, "No model server is available for this request; retry shortly.", retry
        ),
        *(
            _mapper(_and(_cel(_ENVOY_MADE), _status(status)), status, _phrase(status),
                    retry if status == 503 else None)
            for status in _ENVOY_STATUSES
        ),
        # The processors' own 429s and 503s are JSON already: only a Retry-After if they have none.
        {"filter": {"or_filter": {"filters": [_status(429), _status(503)]}}, "headers_to_add": retry},
    ]
    return {"mappers": mappers}


# Statuses Envoy itself answers with besides the cases above (too slow a client: 408; too large:
# 413, 431; a malformed request: 400; its own failures: 500), plus every status of the contract.
_ENVOY_STATUSES = sorted({400, 408, 413, 431, 500, *ERROR_TYPES})


def _phrase(status: int) -> str:
    if status == 408:
        return "The client did not send its whole request in time."
    return f"{HTTPStatus(status).phrase} (answered by the gateway)."
