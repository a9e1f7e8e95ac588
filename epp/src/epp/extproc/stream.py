"""The ext_proc ``Process`` stream: a driver that owns the transport, and the handler it calls.

One gRPC stream carries one HTTP request. :class:`StreamDriver` (the gRPC servicer) owns everything
about the stream itself: the processing modes Envoy announces, buffering the request body (sent in
FULL_DUPLEX_STREAMED mode) up to its size limit and within the server's ``BodyBudget`` (room for it
reserved before gRPC is asked for it), streaming it back once the request is decided,
echoing the response, turning refusals into answers (``errors.refusal_response``) and completing
each exchange exactly once. What a request *means* is the :class:`Handler`'s business; the EPP
(``picker.EndpointPicker``) and the BBR (``bbr.BodyBasedRouter``) are two handlers. The driver calls
a handler at four points, each with the request's typed :class:`Exchange`:

1. ``on_request_headers``: before any body byte is kept (the front door's key check); raising a
   ``RequestError`` refuses the request at once.
2. ``decide`` (a coroutine): once the request is whole; returns a ``decision`` (route it, answer it
   now, or let it pass) or raises a ``RequestError``. Any other exception is logged and answered 500.
3. ``on_response_headers``: the answer has begun; True to see its body too (to meter its usage),
   False when the handler is done with it (in FULL_DUPLEX_STREAMED response mode every chunk passes
   through the stream anyway, and the exchange ends with the response).
4. ``on_complete``: exactly once per exchange, whatever ended it: the response's end, the handler
   being done at the response headers, a refusal, an answer given now, or the stream's cancellation.

Once nothing more is to be seen the driver returns at once: the gRPC stream closes with OK, which
ext_proc takes as "no further processing" and lets the rest of the response through untouched.
Waiting for Envoy to close the stream instead would cost a response-body message and its reply and
one more read. A handler that never looks at responses (``follows_responses = False``: the BBR)
closes its stream as soon as the request went back to Envoy.

Every request has an id (``x-request-id``): the client's, Envoy's, or one the driver makes up and
sets on the request, marked ``x-gateway-request-id-generated`` for what follows. A made-up id goes
back to the client on the answer: on a refusal, and on the response headers the EPP sees (the BBR
does not follow responses; the EPP behind it returns the id the BBR made up). A client's own id it
knows already, and Envoy returns the ids it makes up itself (``always_set_request_id_in_response``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Generic, Protocol, TypeVar

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

from epp.contract import REQUEST_ID_GENERATED_HEADER, REQUEST_ID_HEADER, echoed
from epp.extproc.decision import Answer, Decision
from epp.extproc.errors import RequestError, body_too_large, internal_error, refusal_response
from epp.extproc.messages import (
    CONTINUE_REQUEST_TRAILERS,
    CONTINUE_RESPONSE_BODY,
    CONTINUE_RESPONSE_HEADERS,
    CONTINUE_RESPONSE_HEADERS_BUFFER_BODY,
    CONTINUE_RESPONSE_HEADERS_BUFFER_PARTIAL_BODY,
    CONTINUE_RESPONSE_HEADERS_SKIP_BODY,
    CONTINUE_RESPONSE_TRAILERS,
    header_option,
    headers_to_dict,
    request_body_chunks,
    response_body_chunk,
    with_request_header,
    with_response_header,
)
from epp.extproc.response import ResponseTracker

_log = logging.getLogger("epp.extproc")

_FULL_DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED
_NONE = ProcessingMode.NONE

DEFAULT_MAX_BODY_BYTES = 16 << 20

S = TypeVar("S")


class Exchange(Generic[S]):
    """Everything one stream knows about its HTTP request and response; ``state`` is the handler's
    own per-request state, of the type its ``new_state`` returns."""

    __slots__ = (
        "body",
        "headers",
        "metadata",
        "model",
        "outcome",
        "refusal_status",
        "request_id",
        "request_id_generated",
        "response",
        "state",
    )

    def __init__(self, state: S) -> None:
        self.headers: dict[str, str] = {}
        self.metadata: Mapping[str, Struct] | None = None
        self.body: bytes | None = None
        self.request_id = ""
        # True when the gateway made the id up (this server, or the front door before it): the answer
        # then carries it back to the client.
        self.request_id_generated = False
        self.model = ""
        # Short outcome for metrics: "routed", "models", "passthrough", or the RequestError reason;
        # "cancelled" until something else is known.
        self.outcome = "cancelled"
        # The status the gateway answered with itself (a refusal, or 200 for the model list); 0: none.
        self.refusal_status = 0
        self.response = ResponseTracker()
        self.state = state

    @property
    def path(self) -> str:
        return self.headers.get(":path", "").split("?", 1)[0]

    @property
    def method(self) -> str:
        return self.headers.get(":method", "")


class Handler(Protocol[S]):
    """What a request means to one server; the :class:`StreamDriver` calls it (see the module doc)."""

    # False for a handler that never looks at responses (the BBR).
    follows_responses: bool
    # A request body larger than this is refused with a 413 as soon as it is exceeded.
    max_body_bytes: int

    def new_state(self) -> S:
        """The per-request state of a new exchange."""
        ...

    def on_request_headers(self, exchange: Exchange[S]) -> None:
        """Check the request headers before any body is read; raise ``RequestError`` to refuse."""
        ...

    def on_partial_body(self, exchange: Exchange[S], chunk: bytes) -> None:
        """A chunk of a body still arriving (never called for a body that comes in one chunk): raise
        ``RequestError`` to refuse the request now, before more of it is buffered."""
        ...

    async def decide(self, exchange: Exchange[S]) -> Decision:
        """Decide on the whole request (``exchange.body`` is None when it has none); set
        ``exchange.outcome``; raise ``RequestError`` to refuse it."""
        ...

    def on_response_headers(self, exchange: Exchange[S]) -> bool:
        """The answer's headers are in ``exchange.response``: True to follow its body too."""
        ...

    def on_response_body(self, exchange: Exchange[S]) -> bool:
        """A chunk of the answer's body went into ``exchange.response``: True to see more of it
        (asked only where the response body mode lets the handler stop following)."""
        ...

    def on_complete(self, exchange: Exchange[S]) -> None:
        """The exchange is over; called exactly once."""
        ...


class BodyBudget:
    """The request body bytes all of a server's streams may hold at once, or are about to receive.

    A body is counted from its headers on, at the size its ``content-length`` declares (a body without
    one: room for its next chunk before each read), and given back when it has gone back to Envoy (or
    the stream ends). Room is reserved *before* gRPC is asked for a chunk: a pending read is what lets
    gRPC take a message off the connection (``server._OPTIONS``), so what gRPC holds is counted too.
    A request that finds no room is refused with a 503 and ``Retry-After`` instead of more memory,
    on its headers when it declares its length. ``on_release`` (if any) is told each release, with
    what is still held (``epp.memory.Trimmer`` gives freed memory back to the system after a burst).
    """

    __slots__ = ("held", "limit", "on_release")

    def __init__(self, limit: int, on_release: Callable[[int, int], None] | None = None) -> None:
        if limit <= 0:
            raise ValueError(f"the buffered body budget must be positive, got {limit}")
        self.limit = limit
        self.held = 0
        self.on_release = on_release

    def reserve(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size
        if self.on_release is not None:
            self.on_release(size, self.held)


# The room a stream reserves for its next body chunk when its body's length is unknown (no
# content-length): Envoy's per-connection buffer limit (1 MiB by default) is the most it reads from
# a client before passing a chunk on, so about the most one ext_proc body message carries (a larger
# chunk is counted at its size once it is in, or refused).
CHUNK_ROOM = 1 << 20


_CGROUP_MEMORY_MAX = "/sys/fs/cgroup/memory.max"
DEFAULT_BUFFERED_BYTES = 1 << 30


def buffered_budget(configured: int | None, cgroup_file: str = _CGROUP_MEMORY_MAX) -> int:
    """The budget for buffered bodies: ``configured``, else half the container's memory limit
    (cgroup v2 ``memory.max``), else ``DEFAULT_BUFFERED_BYTES``. Read once, at start-up."""
    if configured is not None:
        return configured
    try:
        with open(cgroup_file) as file:
            text = file.read().strip()
    except OSError:
        return DEFAULT_BUFFERED_BYTES
    if not text.isdigit():  # "max": no limit
        return DEFAULT_BUFFERED_BYTES
    return max(int(text) // 2, 1 << 20)


def over_budget() -> RequestError:
    return RequestError(
        503, "The gateway is holding too many request bodies right now; retry shortly.", None,
        "body_budget", retry_after=1,
    )


_GENERATED_MARK = header_option(REQUEST_ID_GENERATED_HEADER, "1")

_MISCONFIGURED = RequestError(
    500,
    "Gateway misconfiguration: the ext_proc filter must send request bodies in FULL_DUPLEX_STREAMED mode.",
    reason="misconfigured",
)

Write = Callable[[ProcessingResponse], Awaitable[None]]


class StreamDriver(external_processor_pb2_grpc.ExternalProcessorServicer, Generic[S]):  # type: ignore[misc]
    """The ``ExternalProcessor`` servicer: drives each ``Process`` stream through ``handler``."""

    def __init__(self, handler: Handler[S], budget: BodyBudget | None = None) -> None:
        """``budget``: what all streams may buffer at once (unbounded without one)."""
        if handler.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {handler.max_body_bytes}")
        self.handler = handler
        self.budget = budget

    async def Process(
        self, request_iterator: AsyncIterator[ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> None:
        stream = _Stream(self.handler, context.write, self.budget)
        read = context.read
        try:
            while True:
                # A body chunk is taken off the connection only while a read is pending (gRPC's
                # window is otherwise its 256 KB lookahead, ``server._OPTIONS``): room for it first.
                if not stream.room_for_next_chunk():
                    await stream.refuse_over_budget()
                    return
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
                # Not kept while the next message is awaited: a body chunk is up to 1 MB, and a
                # stream whose body is held would hold its last message too.
                request = None
                if over:
                    return
        finally:
            stream.complete()


class _Stream(Generic[S]):
    """One ``Process`` stream: each method handles one kind of message and says whether the stream is
    over (nothing more to see: the servicer returns and gRPC closes the stream with OK)."""

    __slots__ = (
        "body_open",
        "budget",
        "completed",
        "decided",
        "exchange",
        "handler",
        "limit",
        "parts",
        "remaining",
        "request_mode",
        "response_mode",
        "room",
        "set_request_id",
        "size",
        "write",
    )

    def __init__(self, handler: Handler[S], write: Write, budget: BodyBudget | None) -> None:
        self.handler = handler
        self.write = write
        self.budget = budget
        self.exchange: Exchange[S] = Exchange(handler.new_state())
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = handler.max_body_bytes
        # A body is still to come (full duplex, not yet decided), and what its content-length says is
        # left of it (None: no content-length); ``room``: the budget held for its next chunk.
        self.body_open = False
        self.remaining: int | None = None
        self.room = 0
        self.decided = False
        self.completed = False
        # This stream made the request's id up: it sets it on the request it passes on.
        self.set_request_id = False
        # Envoy states its body modes (protocol_config) only since 1.34; without them the filter is
        # taken to be configured as this server requires: full duplex both ways.
        self.request_mode = _FULL_DUPLEX
        self.response_mode = _FULL_DUPLEX

    # -- completion and refusals ------------------------------------------------------------------
    def complete(self) -> None:
        """Tell the handler the exchange is over, exactly once (and give back what it buffered)."""
        self._drop_body()
        if self.completed:
            return
        self.completed = True
        try:
            self.handler.on_complete(self.exchange)
        except Exception:
            _log.exception("finishing a request failed", extra={"request_id": self.exchange.request_id})

    def _refused(self, error: RequestError) -> ProcessingResponse:
        exchange = self.exchange
        exchange.outcome = error.reason
        exchange.refusal_status = error.status
        _log.info(
            "request refused",
            extra={"request_id": exchange.request_id, "status": error.status, "reason": error.reason,
                   "model": echoed(exchange.model) or None},
        )
        return refusal_response(error, exchange.request_id if exchange.request_id_generated else "")

    async def _refuse(self, error: RequestError) -> None:
        """Refuse the request before ``decide`` could see it; the exchange ends."""
        self.decided = True
        response = self._refused(error)
        self.complete()
        await self.write(response)

    async def _decide(self) -> Decision | ProcessingResponse:
        """The handler's decision, or the answer to its refusal or failure."""
        exchange = self.exchange
        self.decided = True
        try:
            return await self.handler.decide(exchange)
        except RequestError as error:
            return self._refused(error)
        except Exception:
            failure = internal_error()
            exchange.outcome = failure.reason
            exchange.refusal_status = failure.status
            _log.exception(
                "deciding on a request failed",
                extra={"request_id": exchange.request_id, "model": echoed(exchange.model) or None},
            )
            return refusal_response(failure, exchange.request_id if exchange.request_id_generated else "")

    async def _answer_request(self) -> bool:
        """Send the decision on the request; False when it answered the request, ending the exchange."""
        decision = await self._decide()
        if isinstance(decision, ProcessingResponse):
            self.complete()
            await self.write(decision)
            return False
        if isinstance(decision, Answer):
            response = decision.response
            if self.exchange.request_id_generated:
                response = with_response_header(response, REQUEST_ID_HEADER, self.exchange.request_id)
            self.complete()
            await self.write(response)
            return False
        response = decision.response()
        if self.set_request_id:
            made_up = header_option(REQUEST_ID_HEADER, self.exchange.request_id)
            response = with_request_header(response, made_up, _GENERATED_MARK)
        await self.write(response)
        return True

    # -- the request ------------------------------------------------------------------------------
    async def request_headers(self, request: ProcessingRequest) -> bool:
        exchange = self.exchange
        if request.HasField("protocol_config"):
            config = request.protocol_config
            self.request_mode = config.request_body_mode
            self.response_mode = config.response_body_mode
        headers = request.request_headers
        exchange.headers = headers_to_dict(headers)
        request_id = exchange.headers.get(REQUEST_ID_HEADER, "")
        if not request_id:
            request_id = exchange.headers[REQUEST_ID_HEADER] = str(uuid.uuid4())
            exchange.request_id_generated = self.set_request_id = True
        elif REQUEST_ID_GENERATED_HEADER in exchange.headers:
            exchange.request_id_generated = True
        exchange.request_id = request_id
        if request.HasField("metadata_context"):
            exchange.metadata = request.metadata_context.filter_metadata
        try:
            self.handler.on_request_headers(exchange)
        except RequestError as refusal:
            await self._refuse(refusal)
            return True
        if headers.end_of_stream or self.request_mode == _NONE:
            if not await self._answer_request():
                return True
            return headers.end_of_stream and self._request_done()
        if self.request_mode != _FULL_DUPLEX:
            await self._refuse(_MISCONFIGURED)
            return True
        declared = exchange.headers.get("content-length", "")
        self.remaining = int(declared) if declared.isdigit() else None
        if self.remaining is not None and self.remaining > self.limit:
            await self._refuse(body_too_large(self.limit))
            return True
        self.body_open = True
        return False

    def room_for_next_chunk(self) -> bool:
        """Reserve the budget for what the next read may bring: the rest of the body its
        content-length declares, or ``CHUNK_ROOM`` without one. False when there is no room (the
        request is to be refused); a body that declares its length is so refused on its headers,
        before gRPC takes any of it in, and is never refused for want of room later."""
        if self.budget is None or not self.body_open or self.decided:
            return True
        want = CHUNK_ROOM if self.remaining is None else self.remaining
        if self.room >= want:
            return True
        if not self.budget.reserve(want - self.room):
            return False
        self.room = want
        return True

    async def refuse_over_budget(self) -> None:
        await self._refuse(over_budget())

    def _count(self, size: int) -> bool:
        """Count a chunk that came in: out of its room, the rest of the room kept for what is to come
        (more only for a chunk larger than its room); False when that does not fit the budget."""
        if self.budget is None:
            return True
        if size <= self.room:
            self.room -= size
            return True
        extra, self.room = size - self.room, 0
        return self.budget.reserve(extra)

    def _release_room(self) -> None:
        if self.room:
            assert self.budget is not None
            self.budget.release(self.room)
            self.room = 0

    async def request_body(self, message: HttpBody) -> bool:
        write = self.write
        if self.decided:
            # A proxy that sends a body after the request was answered from its headers (its body
            # mode said NONE): pass the body on unchanged, never answer twice.
            for chunk in request_body_chunks(message.body, end_of_stream=message.end_of_stream):
                await write(chunk)
            return False
        chunk = message.body
        size = len(chunk)
        if self.remaining is not None:
            self.remaining = max(self.remaining - size, 0)
        if self.size + size > self.limit:
            self._drop_body()
            await self._refuse(body_too_large(self.limit))
            return True
        if not self._count(size):
            self._drop_body()
            await self._refuse(over_budget())
            return True
        self.parts.append(chunk)
        self.size += size
        if not message.end_of_stream:
            try:
                self.handler.on_partial_body(self.exchange, chunk)
            except RequestError as refusal:
                self._drop_body()
                await self._refuse(refusal)
                return True
            return False
        self.body_open = False
        body = self._take_body()
        if not await self._answer_request():
            return True
        # Even an empty body (a chunked GET's lone 0 chunk) was sent as a body message, so it gets
        # its (empty) body back.
        for answer in request_body_chunks(body):
            await write(answer)
        self._drop_body()
        return self._request_done()

    async def request_trailers(self) -> bool:
        self.body_open = False
        if not self.decided:
            body = self._take_body()
            if not await self._answer_request():
                return True
            for chunk in request_body_chunks(body, end_of_stream=False):
                await self.write(chunk)
            self._drop_body()
        await self.write(CONTINUE_REQUEST_TRAILERS)
        return self._request_done()

    def _request_done(self) -> bool:
        """The whole request went back to Envoy: over for a handler that does not follow responses.

        Closing the stream with OK then tells Envoy "no further processing"; left open, the stream
        lives until Envoy resets it at the end of the HTTP request, and a reset gRPC call costs the
        server more than a finished one (the BBR's resident memory grew by ~120 bytes per request).
        """
        if self.handler.follows_responses:
            return False
        self.complete()
        return True

    def _drop_body(self) -> None:
        """The body went back to Envoy (or never will): let go of it and of its budget."""
        self._release_room()
        self.body_open = False
        self.parts = []
        self.exchange.body = None
        if self.budget is not None and self.size:
            self.budget.release(self.size)
        self.size = 0

    def _take_body(self) -> bytes:
        """The buffered request body, handed to the exchange (an empty body is no body to decide on)."""
        parts, self.parts = self.parts, []
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self.exchange.body = body or None
        return body

    # -- the response -----------------------------------------------------------------------------
    def _headers_reply(self, reply: ProcessingResponse) -> ProcessingResponse:
        """``reply`` to the response headers, carrying a made-up request id back to the client."""
        if not self.exchange.request_id_generated:
            return reply
        return with_response_header(reply, REQUEST_ID_HEADER, self.exchange.request_id)

    async def response_headers(self, headers: HttpHeaders) -> bool:
        exchange = self.exchange
        response = exchange.response
        response.on_headers(headers_to_dict(headers))
        if headers.end_of_stream:
            response.ended = True
            self.complete()
            await self.write(self._headers_reply(CONTINUE_RESPONSE_HEADERS))
            return True
        follow = self.handler.on_response_headers(exchange)
        if self.response_mode == _FULL_DUPLEX:
            # Every chunk comes through this stream and must be echoed: the exchange ends with them.
            await self.write(self._headers_reply(CONTINUE_RESPONSE_HEADERS))
            return False
        if response.status >= 400:
            # Errors are rare and their body tells why (e.g. model not found): read it whole.
            await self.write(self._headers_reply(CONTINUE_RESPONSE_HEADERS_BUFFER_BODY))
            return False
        if follow:
            # Its usage is counted: follow a stream to its last event; read a complete answer up to
            # Envoy's buffer limit and pass the rest.
            reply = (CONTINUE_RESPONSE_HEADERS if response.streaming
                     else CONTINUE_RESPONSE_HEADERS_BUFFER_PARTIAL_BODY)
            await self.write(self._headers_reply(reply))
            return False
        # The answer has begun and nothing in its body is needed: once Envoy has the headers the
        # handler is done with it, and a stream no longer depends on this server staying up (a
        # replica that dies now cuts no stream that has started).
        self.complete()
        await self.write(self._headers_reply(CONTINUE_RESPONSE_HEADERS_SKIP_BODY))
        return True

    async def response_body(self, message: HttpBody) -> bool:
        response = self.exchange.response
        response.on_body(message.body)
        response.ended = message.end_of_stream
        if self.response_mode == _FULL_DUPLEX:
            if message.end_of_stream:
                self.complete()
            await self.write(response_body_chunk(message.body, message.end_of_stream))
            return bool(message.end_of_stream)
        # Streamed: once the handler needs no more of the body, the stream is over and the rest of the
        # answer passes untouched (a replica that dies then cuts nothing).
        over = message.end_of_stream or not self.handler.on_response_body(self.exchange)
        if over:
            self.complete()
        await self.write(CONTINUE_RESPONSE_BODY)
        return bool(over)

    async def response_trailers(self) -> bool:
        self.exchange.response.ended = True
        self.complete()
        await self.write(CONTINUE_RESPONSE_TRAILERS)
        return True
