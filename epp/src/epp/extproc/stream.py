"""The ext_proc ``Process`` stream, shared by the EPP and the BBR.

One gRPC stream carries one HTTP request. The request body arrives in FULL_DUPLEX_STREAMED mode:
chunks are buffered until ``end_of_stream`` (or the request trailers), then the servicer's
``decide`` says what to do (see ``decision``): route it (headers and metadata, then the body
streamed back unchanged), pass it on unchanged, or answer it now with an ImmediateResponse, which
ends the exchange and the stream. Response headers, body chunks and trailers are echoed while a
``ResponseTracker`` follows them. ``finish`` runs exactly once per stream: when the response ends,
when the request is refused, or when Envoy or the client cancels the stream.

Once nothing more is to be seen (an answer, streamed or not, whose body need not be read, or the end
of the response) the servicer returns at once: the gRPC stream closes with OK, which ext_proc takes as
"no further processing" and lets the rest of the response through untouched. Waiting for Envoy to
close the stream instead would cost a response-body message and its reply (Envoy still sends a body
it had already queued when a mode override turns body processing off) and one more read.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import grpc
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)
from google.protobuf.struct_pb2 import Struct

from epp.contract import echoed
from epp.extproc.decision import Answer, Decision
from epp.extproc.errors import RequestError, body_too_large, internal_error
from epp.extproc.messages import (
    CONTINUE_REQUEST_TRAILERS,
    CONTINUE_RESPONSE_BODY,
    CONTINUE_RESPONSE_HEADERS,
    CONTINUE_RESPONSE_HEADERS_BUFFER_BODY,
    CONTINUE_RESPONSE_HEADERS_BUFFER_PARTIAL_BODY,
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
        "finished",
        "headers",
        "metadata",
        "model",
        "outcome",
        "request_id",
        "response",
        "state",
    )

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.metadata: Mapping[str, Struct] | None = None
        self.body: bytes | None = None
        self.request_id = ""
        self.model = ""
        # Short outcome for metrics: "routed", "models", "passthrough", or the RequestError reason.
        self.outcome = "cancelled"
        self.decided = False
        self.finished = False
        self.response = ResponseTracker()
        # Servicer-specific state (the EPP keeps its pick here).
        self.state: object = None

    @property
    def path(self) -> str:
        return self.headers.get(":path", "").split("?", 1)[0]

    @property
    def method(self) -> str:
        return self.headers.get(":method", "")


_MISCONFIGURED = RequestError(
    500,
    "Gateway misconfiguration: the ext_proc filter must send request bodies in FULL_DUPLEX_STREAMED mode.",
    reason="misconfigured",
)

Write = Callable[[ProcessingResponse], Awaitable[None]]


class ExtProcServicer(external_processor_pb2_grpc.ExternalProcessorServicer, abc.ABC):  # type: ignore[misc]
    """Drives the stream; subclasses decide where a request goes and what happens when it ends.

    A request body larger than ``max_body_bytes`` is refused with a 413 as soon as it is exceeded,
    so no client can make the server buffer more than that.
    """

    # False for a servicer that never looks at responses (the BBR): its stream is over once the
    # request is answered, and it closes it then rather than waiting for Envoy to end it.
    follows_responses: bool = True

    def __init__(self, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        self.max_body_bytes = max_body_bytes

    @abc.abstractmethod
    def decide(self, exchange: Exchange) -> Decision:
        """Decide on the request once it is whole (``exchange.body`` is None when it has no body).
        Raise ``RequestError`` to refuse it; any other exception is logged and answered with a 500.
        The servicer sets ``exchange.outcome``."""

    @abc.abstractmethod
    def finish(self, exchange: Exchange) -> None:
        """The stream is over (response done, refused, answered or cancelled); called exactly once."""

    def screen(self, exchange: Exchange) -> None:
        """Check the request headers before any body is read (the front door's key check); raise
        ``RequestError`` to refuse the request at once."""

    def wants_usage(self, exchange: Exchange) -> bool:
        """Whether an answer's body must be read for its usage (a stream followed to its end, a
        complete answer read up to Envoy's buffer limit); otherwise the servicer is done with the
        exchange at its response headers and the body passes unread (when the response body mode
        allows it: in full duplex every chunk is echoed)."""
        return False

    def _decide(self, exchange: Exchange) -> Decision:
        exchange.decided = True
        try:
            return self.decide(exchange)
        except RequestError as error:
            self._refused(exchange, error)
            return Answer(error.response())
        except Exception:
            failure = internal_error()
            exchange.outcome = failure.reason
            _log.exception(
                "deciding on a request failed",
                extra={"request_id": exchange.request_id, "model": echoed(exchange.model) or None},
            )
            return Answer(failure.response())

    @staticmethod
    def _refused(exchange: Exchange, error: RequestError) -> None:
        exchange.outcome = error.reason
        _log.info(
            "request refused",
            extra={"request_id": exchange.request_id, "status": error.status, "reason": error.reason,
                   "model": echoed(exchange.model) or None},
        )

    async def _answer_request(self, exchange: Exchange, write: Write) -> bool:
        """Send the decision on the request; False when it answered the request, ending the exchange."""
        decision = self._decide(exchange)
        if isinstance(decision, Answer):
            self._finish(exchange)
            await write(decision.response)
            return False
        await write(decision.response())
        return True

    async def _refuse(self, exchange: Exchange, error: RequestError, write: Write) -> None:
        """Refuse the request before ``decide`` could see it; the exchange ends."""
        exchange.decided = True
        self._refused(exchange, error)
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
        stream = _Stream(self, context.write)
        read = context.read
        try:
            while True:
                request = await read()
                if request is grpc.aio.EOF:
                    return
                kind = request.WhichOneof("request")
                if kind == "request_body":
                    over = await stream.request_body(request.request_body)
                elif kind == "response_body":
                    over = await stream.response_body(request.response_body)
                elif kind == "request_headers":
                    over = await stream.request_headers(request)
                elif kind == "request_trailers":
                    over = await stream.request_trailers()
                elif kind == "response_headers":
                    over = await stream.response_headers(request.response_headers)
                elif kind == "response_trailers":
                    over = await stream.response_trailers()
                else:
                    over = False
                if over:
                    return
        finally:
            self._finish(stream.exchange)


class _Stream:
    """One ``Process`` stream: each method handles one kind of message and says whether the stream is
    over (nothing more to see: the servicer returns and gRPC closes the stream with OK)."""

    __slots__ = ("exchange", "limit", "parts", "request_mode", "response_mode", "servicer", "size", "write")

    def __init__(self, servicer: ExtProcServicer, write: Write) -> None:
        self.servicer = servicer
        self.write = write
        self.exchange = Exchange()
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = servicer.max_body_bytes
        # Envoy states its body modes (protocol_config) only since 1.34; without them the filter is
        # taken to be configured as this server requires: full duplex both ways.
        self.request_mode = _FULL_DUPLEX
        self.response_mode = _FULL_DUPLEX

    async def request_headers(self, request: ProcessingRequest) -> bool:
        exchange = self.exchange
        if request.HasField("protocol_config"):
            config = request.protocol_config
            self.request_mode = config.request_body_mode
            self.response_mode = config.response_body_mode
        headers = request.request_headers
        exchange.headers = headers_to_dict(headers)
        exchange.request_id = exchange.headers.get("x-request-id", "")
        if request.HasField("metadata_context"):
            exchange.metadata = request.metadata_context.filter_metadata
        try:
            self.servicer.screen(exchange)
        except RequestError as refusal:
            await self.servicer._refuse(exchange, refusal, self.write)
            return True
        if headers.end_of_stream or self.request_mode == _NONE:
            if not await self.servicer._answer_request(exchange, self.write):
                return True
            return headers.end_of_stream and self._request_done()
        if self.request_mode != _FULL_DUPLEX:
            await self.servicer._refuse(exchange, _MISCONFIGURED, self.write)
            return True
        return False

    async def request_body(self, message: HttpBody) -> bool:
        exchange, write = self.exchange, self.write
        if exchange.decided:
            # A proxy that sends a body after the request was answered from its headers (its body
            # mode said NONE): pass the body on unchanged, never answer twice.
            for chunk in request_body_chunks(message.body, end_of_stream=message.end_of_stream):
                await write(chunk)
            return False
        self.parts.append(message.body)
        self.size += len(message.body)
        if self.size > self.limit:
            await self.servicer._refuse(exchange, body_too_large(self.limit), write)
            return True
        if not message.end_of_stream:
            return False
        body = self._take_body()
        if not await self.servicer._answer_request(exchange, write):
            return True
        # Even an empty body (a chunked GET's lone 0 chunk) was sent as a body message, so it gets
        # its (empty) body back.
        for chunk in request_body_chunks(body):
            await write(chunk)
        return self._request_done()

    async def request_trailers(self) -> bool:
        if not self.exchange.decided:
            body = self._take_body()
            if not await self.servicer._answer_request(self.exchange, self.write):
                return True
            for chunk in request_body_chunks(body, end_of_stream=False):
                await self.write(chunk)
        await self.write(CONTINUE_REQUEST_TRAILERS)
        return self._request_done()

    def _request_done(self) -> bool:
        """The whole request went back to Envoy: over for a servicer that does not follow responses.

        Closing the stream with OK then tells Envoy "no further processing"; left open, the stream
        lives until Envoy resets it at the end of the HTTP request, and a reset gRPC call costs the
        server more than a finished one (the BBR's resident memory grew by ~120 bytes per request).
        """
        if self.servicer.follows_responses:
            return False
        self.servicer._finish(self.exchange)
        return True

    def _take_body(self) -> bytes:
        """The buffered request body, handed to the exchange (an empty body is no body to decide on)."""
        parts, self.parts = self.parts, []
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self.exchange.body = body or None
        return body

    async def response_headers(self, headers: HttpHeaders) -> bool:
        response = self.exchange.response
        response.on_headers(headers_to_dict(headers))
        if headers.end_of_stream:
            self.servicer._finish(self.exchange)
            await self.write(CONTINUE_RESPONSE_HEADERS)
            return True
        if self.response_mode == _FULL_DUPLEX:
            await self.write(CONTINUE_RESPONSE_HEADERS)
            return False
        if response.status >= 400:
            # Errors are rare and their body tells why (e.g. model not found): read it whole.
            await self.write(CONTINUE_RESPONSE_HEADERS_BUFFER_BODY)
            return False
        if self.servicer.wants_usage(self.exchange):
            # Its usage is counted: follow a stream to its last event; read a complete answer up to
            # Envoy's buffer limit and pass the rest.
            if response.streaming:
                await self.write(CONTINUE_RESPONSE_HEADERS)
            else:
                await self.write(CONTINUE_RESPONSE_HEADERS_BUFFER_PARTIAL_BODY)
            return False
        # The answer has begun and nothing in its body is needed: once Envoy has the headers the
        # servicer is done with it, and a stream no longer depends on this server staying up (a
        # replica that dies now cuts no stream that has started).
        self.servicer._finish(self.exchange)
        await self.write(CONTINUE_RESPONSE_HEADERS_SKIP_BODY)
        return True

    async def response_body(self, message: HttpBody) -> bool:
        self.exchange.response.on_body(message.body)
        if message.end_of_stream:
            self.servicer._finish(self.exchange)
        if self.response_mode == _FULL_DUPLEX:
            await self.write(response_body_chunk(message.body, message.end_of_stream))
        else:
            await self.write(CONTINUE_RESPONSE_BODY)
        return bool(message.end_of_stream)

    async def response_trailers(self) -> bool:
        self.servicer._finish(self.exchange)
        await self.write(CONTINUE_RESPONSE_TRAILERS)
        return True
