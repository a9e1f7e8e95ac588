"""The one box's Envoy limits and timeouts, each sized on purpose (no hidden default caps).

Envoy's defaults cap every cluster at 1,024 requests in flight (circuit breakers), which on the
ext_proc clusters silently capped the whole gateway: a 1,025th concurrent request got an empty 500.
Here every number is chosen, and every limit that trips is answered (``onebox.envoy.replies``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The EPP's and BBR's gRPC servers accept 10,000 concurrent streams per connection
# (``grpc.max_concurrent_streams`` in epp.extproc.server); the request budget stays below it, so one
# HTTP/2 connection from Envoy to each of them can carry every request in flight.
_EXT_PROC_STREAMS_PER_CONNECTION = 10_000


class GatewayLimits(BaseModel):
    """How much the gateway takes at once; past a limit the client gets a JSON 503 + Retry-After."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_requests: int = Field(
        default=4096, ge=1, le=_EXT_PROC_STREAMS_PER_CONNECTION,
        description="requests in flight through the gateway. Each one holds a gRPC stream on the BBR "
        "and one on its pool's EPP, and one HTTP/1.1 connection to its pod, so the circuit breakers "
        "of the BBR, EPP and pod clusters all get this number. 4,096: well above the 1,500-at-once "
        "burst the one box is tested with, and with max_connections it needs about 12,300 file "
        "descriptors in Envoy (the box raises its soft RLIMIT_NOFILE to the hard limit).",
    )  # fmt: skip
    max_connections: int = Field(
        default=8192, ge=1,
        description="client connections (Envoy's overload manager refuses more at accept). Twice "
        "max_requests, so that idle or slow clients run out of connections only after the request "
        "budget, and a request past the budget is still answered, with a 503.",
    )  # fmt: skip
    max_streams_per_connection: int = Field(
        default=100, ge=1,
        description="concurrent HTTP/2 streams one client connection may open: 100, what HTTP/2 "
        "servers commonly advertise (RFC 9113 recommends no less), so one client cannot take the "
        "whole request budget on a single connection.",
    )  # fmt: skip
    retry_after_seconds: int = Field(
        default=1, ge=0,
        description="the Retry-After of an overload or picker-unavailable answer: a supervised EPP "
        "or BBR is back within about a second of its death, a simulated request lasts ~0.5 s.",
    )  # fmt: skip


class GatewayTimeouts(BaseModel):
    """How long the gateway waits, in seconds; a timeout is answered with a JSON 408 or 504."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: float = Field(
        default=2.0, gt=0,
        description="TCP connect to a pod, the EPP or the BBR: all on the same network (loopback in "
        "the box), where a connect that takes longer than 2 s is a host that is gone.",
    )  # fmt: skip
    request_headers: float = Field(
        default=10.0, gt=0,
        description="from a client's first byte to its last header byte: a header block is a few KB, "
        "so 10 s is generous for any real client and bounds a client that trickles headers.",
    )  # fmt: skip
    request: float = Field(
        default=60.0, gt=0,
        description="the whole request, body included, received from the client: the largest body "
        "the BBR and EPP accept is 16 MiB (--max-body-bytes), so 60 s allows a ~280 KB/s uplink; a "
        "client that sends headers and never its body is answered 408 at the latest then.",
    )  # fmt: skip
    upstream_idle: float = Field(
        default=120.0, gt=0,
        description="how long a pod may send nothing (before its first byte or between two) before "
        "the request ends with a 504: a non-streamed answer is silent for its whole generation, "
        "and 4,096 tokens at vLLM's ~25 ms per token under load is ~100 s. A stopped or hung pod "
        "releases its requests after this long instead of holding them forever.",
    )  # fmt: skip
    stream_idle: float = Field(
        default=300.0, gt=0,
        description="any stream with no activity in either direction (Envoy's default, 5 minutes, "
        "stated): the backstop behind the narrower timeouts above.",
    )  # fmt: skip
    connection_idle: float = Field(
        default=120.0, gt=0,
        description="a client connection with no request in flight is closed after this long; "
        "client pools (httpx, aiohttp, the OpenAI SDK) keep idle connections for less.",
    )  # fmt: skip
    pod_connection_idle: float = Field(
        default=4.0, gt=0,
        description="a connection to a pod with no request on it is closed after this long: under "
        "vLLM's 5 s keep-alive (uvicorn's), so the gateway closes an idle connection before the pod "
        "does and never sends a request onto one the pod is closing (a 502 for the client).",
    )  # fmt: skip
    ext_proc_message: float = Field(
        default=10.0, gt=0,
        description="one answer of the BBR or an EPP to one ext_proc message (it decides in well under "
        "a millisecond; 10 s means it is stuck): past it the request gets a JSON 503.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _ordered(self) -> GatewayTimeouts:
        if self.request_headers > self.request:
            raise ValueError("request_headers must not exceed request (the headers are part of it)")
        return self


def seconds(value: float) -> str:
    """A protobuf Duration as Envoy's YAML takes it: ``2s``, ``0.5s``."""
    return f"{value:g}s"


def circuit_breakers(limits: GatewayLimits) -> dict[str, Any]:
    """The same budget on every cluster, so no cluster caps the gateway below ``max_requests``."""
    budget = limits.max_requests
    return {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_connections": budget,
                "max_pending_requests": budget,
                "max_requests": budget,
            }
        ]
    }
