"""The ext_proc ``Process`` stream, shared by the EPP and the BBR.

One gRPC stream carries one HTTP request. The request body arrives in FULL_DUPLEX_STREAMED mode:
chunks are buffered until ``end_of_stream`` (or the request trailers), then the servicer's
``decide`` answers the request headers — routing headers, or an ImmediateResponse error — and the
body is streamed back unchanged. Response headers, body chunks and trailers are echoed while a
``ResponseTracker`` follows them. ``finish`` runs exactly once per stream: when the response ends,
when the request is refused, or when Envoy or the client cancels the stream.

Once nothing more is to be seen (a complete answer whose body Envoy need not show, or the end of the
response) the servicer returns at once: the gRPC stream closes with OK, which ext_proc takes as
"no further processing" and lets the rest of the response through untouched. Waiting for Envoy to
close the stream instead would cost a response-body message and its reply (Envoy still sends a body
it had already queued when a mode override turns body processing off) and one more read.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import grpc
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse
from google.protobuf.struct_pb2 import Struct

from epp.extproc.errors import RequestError, body_too_large, internal_error
from epp.extproc.messages import (
    CONTINUE_REQUEST_TRAILERS,
    CONTINUE_RESPONSE_BODY,
    CONTINUE_RESPONSE_HEADERS,
    CONTINUE_RESPONSE_HEADERS_BUFFER_BODY,
    CONTINUE_RESPONSE_HEADERS_SKIP_BODY,
    CONTINUE_RESPONSE_TRAILERS,
    headers_to_dict,
    request_body_chunks,
    response_body_chunk,
)
from epp.extproc.response import ResponseTracker

_log = logging.getLogger("epp.extproc")

_FULL_DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED
_NONE = ProcessingMode.NONE

DEFAULT_MAX_BODY_BYTES = 16 << 20


class Exchange:
    """Everything one stream knows about its HTTP request and response."""

    __slots__ = (
        "body",
        "decided",
        "endpoint_address",
        "finished",
        "headers",
        "metadata",
        "model",
        "outcome",
        "request_id",
        "response",
        "started",
        "state",
    )

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.metadata: Mapping[str, Struct] | None = None
        self.body: bytes | None = None
        self.request_id = ""
        self.model = ""
        # Short outcome for metrics: "routed", or the RequestError reason.
        self.outcome = "cancelled"
        self.endpoint_address = ""
        self.decided = False
        self.finished = False
        self.started = time.monotonic()
        self.response = ResponseTracker()
        # Servicer-specific state (the EPP keeps the picked Endpoint here).
        self.state: object = None

    @property
    def path(self) -> str:
        return self.headers.get(":path", "").split("?", 1)[0]

    @property
    def method(self) -> str:
        return self.headers.get(":method", "")


class ExtProcServicer(external_processor_pb2_grpc.ExternalProcessorServicer, abc.ABC):  # type: ignore[misc]
    """Drives the stream; subclasses decide where a request goes and what happens when it ends.

    A request body larger than ``max_body_bytes`` is refused with a 413 as soon as it is exceeded,
    so no client can make the server buffer more than that.
    """

    def __init__(self, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        self.max_body_bytes = max_body_bytes

    @abc.abstractmethod
    def decide(self, exchange: Exchange) -> ProcessingResponse:
        """Answer the request headers once the whole request is known (``exchange.body`` is None when
        the request has no body). Raise ``RequestError`` to refuse it; any other exception is logged
        and answered with a 500."""

    @abc.abstractmethod
    def finish(self, exchange: Exchange) -> None:
        """The stream is over (response done, refused, or cancelled); called exactly once."""

    def _decide(self, exchange: Exchange) -> tuple[ProcessingResponse, bool]:
        exchange.decided = True
        try:
            return self.decide(exchange), True
        except RequestError as error:
            exchange.outcome = error.reason
            _log.info(
                "request refused",
                extra={"request_id": exchange.request_id, "status": error.status, "reason": error.reason,
                       "model": exchange.model or None},
            )
            return error.response(), False
        except Exception:
            failure = internal_error()
            exchange.outcome = failure.reason
            _log.exception(
                "deciding on a request failed",
                extra={"request_id": exchange.request_id, "model": exchange.model or None},
            )
            return failure.response(), False

    async def _answer_request(
        self, exchange: Exchange, write: Callable[[ProcessingResponse], Awaitable[None]]
    ) -> bool:
        """Send the decision on the request; False when it was a refusal that ends the exchange."""
        answer, routed = self._decide(exchange)
        if not routed:
            self._finish(exchange)
        await write(answer)
        return routed

    async def _refuse(
        self, exchange: Exchange, error: RequestError, write: Callable[[ProcessingResponse], Awaitable[None]]
    ) -> None:
        """Refuse the request before ``decide`` could see it; the exchange ends."""
        exchange.decided = True
        exchange.outcome = error.reason
        _log.info(
            "request refused",
            extra={"request_id": exchange.request_id, "status": error.status, "reason": error.reason},
        )
        self._finish(exchange)
        await write(error.response())

    def _finish(self, exchange: Exchange) -> None:
        if exchange.finished:
            return
        exchange.finished = True
        try:
            self.finish(exchange)
        except Exception:
            _log.exception("finishing a request failed", extra={"request_id": exchange.request_id})

    async def Process(
        self, request_iterator: AsyncIterator[ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> None:
        exchange = Exchange()
        parts: list[bytes] = []
        size = 0
        limit = self.max_body_bytes
        # Envoy states its body modes (protocol_config) only since 1.34; without them the filter is
        # taken to be configured as this server requires: full duplex both ways.
        request_mode = _FULL_DUPLEX
        response_mode = _FULL_DUPLEX
        try:
            read = context.read
            write = context.write
            while True:
                request = await read()
                if request is grpc.aio.EOF:
                    return
                kind = request.WhichOneof("request")
                if kind == "request_body":
                    message = request.request_body
                    if exchange.decided:
                        # A proxy that sends a body after the request was answered from its headers
                        # (its body mode said NONE): pass the body on unchanged, never answer twice.
                        for chunk in request_body_chunks(message.body, end_of_stream=message.end_of_stream):
                            await write(chunk)
                        continue
                    parts.append(message.body)
                    size += len(message.body)
                    if size > limit:
                        await self._refuse(exchange, body_too_large(limit), write)
                        return
                    if not message.end_of_stream:
                        continue
                    body = parts[0] if len(parts) == 1 else b"".join(parts)
                    parts = []
                    # An empty body (e.g. a chunked GET's lone 0 chunk) is no body to decide on, but
                    # Envoy sent a body message, so it still gets its (empty) body back.
                    exchange.body = body or None
                    if not await self._answer_request(exchange, write):
                        return
                    for chunk in request_body_chunks(body):
                        await write(chunk)
                elif kind == "response_body":
                    message = request.response_body
                    exchange.response.on_body(message.body)
                    if message.end_of_stream:
                        self._finish(exchange)
                    if response_mode == _FULL_DUPLEX:
                        await write(response_body_chunk(message.body, message.end_of_stream))
                    else:
                        await write(CONTINUE_RESPONSE_BODY)
                    if message.end_of_stream:
                        return
                elif kind == "request_headers":
                    if request.HasField("protocol_config"):
                        config = request.protocol_config
                        request_mode = config.request_body_mode
                        response_mode = config.response_body_mode
                    headers = request.request_headers
                    exchange.headers = headers_to_dict(headers)
                    exchange.request_id = exchange.headers.get("x-request-id", "")
                    if request.HasField("metadata_context"):
                        exchange.metadata = request.metadata_context.filter_metadata
                    if headers.end_of_stream or request_mode == _NONE:
                        if not await self._answer_request(exchange, write):
                            return
                    elif request_mode != _FULL_DUPLEX:
                        error = RequestError(
                            500,
                            "Gateway misconfiguration: the ext_proc filter must send request bodies "
                            "in FULL_DUPLEX_STREAMED mode.",
                            reason="misconfigured",
                        )
                        await self._refuse(exchange, error, write)
                        return
                elif kind == "request_trailers":
                    if not exchange.decided:
                        body = b"".join(parts)
                        parts = []
                        exchange.body = body or None
                        if not await self._answer_request(exchange, write):
                            return
                        for chunk in request_body_chunks(body, end_of_stream=False):
                            await write(chunk)
                    await write(CONTINUE_REQUEST_TRAILERS)
                elif kind == "response_headers":
                    response = exchange.response
                    response.on_headers(headers_to_dict(request.response_headers))
                    if request.response_headers.end_of_stream:
                        self._finish(exchange)
                        await write(CONTINUE_RESPONSE_HEADERS)
                        return
                    elif response_mode == _FULL_DUPLEX or response.streaming:
                        await write(CONTINUE_RESPONSE_HEADERS)
                    elif response.status >= 400:
                        # Errors are rare and their body tells why (e.g. model not found): read it whole.
                        await write(CONTINUE_RESPONSE_HEADERS_BUFFER_BODY)
                    else:
                        # A complete non-streaming answer: its body is not needed, and once Envoy has
                        # it the request is as good as done.
                        self._finish(exchange)
                        await write(CONTINUE_RESPONSE_HEADERS_SKIP_BODY)
                        return
                elif kind == "response_trailers":
                    self._finish(exchange)
                    await write(CONTINUE_RESPONSE_TRAILERS)
                    return
        finally:
            self._finish(exchange)
