"""The few parts of HTTP/1.1 the metrics scraper needs: one keep-alive connection per endpoint,
one ``GET`` at a time, answers read as they arrive.

A pool of 100 pods scraped every 50 ms is 2,000 requests a second. A general client (aiohttp) runs a
coroutine, a timer and a response object per request; here a request is one ``write`` and its answer
is assembled by ``data_received`` callbacks, with no task woken per scrape. Bodies come with a
``Content-Length``, chunked, or delimited by the connection's close, as RFC 9112 allows; nothing else
(no compression is asked for, no redirects are followed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024  # a vLLM page is tens of KB; far beyond that is not a metrics page


class ResponseError(ValueError):
    """An answer that is not HTTP/1.x as this reader takes it; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    keep_alive: bool


def request_bytes(host_port: str, path: str) -> bytes:
    """The ``GET`` of ``path`` on ``host_port`` (``10.0.0.1:8000``, ``[fd00::1]:8000``)."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host_port}\r\nUser-Agent: epp-metrics-scraper\r\n"
        "Accept: text/plain\r\n\r\n"
    ).encode("ascii")


class ResponseReader:
    """Assembles one answer from the bytes received; :meth:`feed` returns it once complete.

    After a complete answer, bytes beyond it (there should be none: one request at a time) are an
    error. Call :meth:`eof` when the peer closes: it completes a body delimited by the close.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._status = 0
        self._keep_alive = True
        self._length: int | None = None  # Content-Length; None: chunked or until close
        self._chunked = False
        self._head_done = False
        self._body = bytearray()
        self._position = 0  # how far the chunked decoder has read self._buffer

    def feed(self, data: bytes) -> Response | None:
        self._buffer += data
        if not self._head_done:
            end = self._buffer.find(b"\r\n\r\n")
            if end == -1:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise ResponseError("response head too large")
                return None
            self._head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
        if self._chunked:
            return self._chunks()
        if self._length is not None:
            if len(self._buffer) > self._length:
                raise ResponseError("more bytes than Content-Length")
            if len(self._buffer) == self._length:
                return Response(self._status, bytes(self._buffer), self._keep_alive)
            return None
        if len(self._buffer) > MAX_BODY_BYTES:
            raise ResponseError(f"body larger than {MAX_BODY_BYTES} bytes")
        return None

    def eof(self) -> Response:
        """The answer, when the close ends it; ``ResponseError`` when it came too soon."""
        if self._head_done and self._length is None and not self._chunked:
            return Response(self._status, bytes(self._buffer), False)
        raise ResponseError("connection closed before the end of the answer")

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ResponseError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        self._status = int(parts[1])
        self._keep_alive = parts[0] != b"HTTP/1.0"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ResponseError(f"malformed header line {line[:80]!r}")
            key = name.strip().lower()
            if key == b"content-length":
                if not value.strip().isdigit():
                    raise ResponseError(f"bad Content-Length {value.strip()[:40]!r}")
                self._length = int(value)
                if self._length > MAX_BODY_BYTES:
                    raise ResponseError(f"body larger than {MAX_BODY_BYTES} bytes")
            elif key == b"transfer-encoding":
                self._chunked = value.strip().lower().endswith(b"chunked")
            elif key == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    self._keep_alive = False
                elif b"keep-alive" in tokens:
                    self._keep_alive = True
        if self._chunked:
            self._length = None
        self._head_done = True

    def _chunks(self) -> Response | None:
        buffer = self._buffer
        while True:
            line_end = buffer.find(b"\r\n", self._position)
            if line_end == -1:
                return None
            size_text = bytes(buffer[self._position : line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ResponseError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                # The last chunk, then trailers (rarely any), then an empty line.
                rest = line_end + 2
                if buffer[rest : rest + 2] != b"\r\n" and buffer.find(b"\r\n\r\n", rest) == -1:
                    return None
                return Response(self._status, bytes(self._body), self._keep_alive)
            start = line_end + 2
            if len(buffer) < start + size + 2:
                return None
            self._body += buffer[start : start + size]
            if len(self._body) > MAX_BODY_BYTES:
                raise ResponseError(f"body larger than {MAX_BODY_BYTES} bytes")
            self._position = start + size + 2


class Connection(asyncio.Protocol):
    """One keep-alive connection; :meth:`get` sends the request, ``on_answer`` gets the outcome
    (a :class:`Response` or the exception that ended it) from the event loop's callbacks."""

    def __init__(self, on_answer: Callable[[Connection, Response | BaseException], None]) -> None:
        self._on_answer = on_answer
        self._transport: asyncio.Transport | None = None
        self._reader: ResponseReader | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass, but has its methods).
        self._transport = cast(asyncio.Transport, transport)

    @property
    def busy(self) -> bool:
        """A request was sent and its answer is not complete."""
        return self._reader is not None

    def get(self, request: bytes) -> None:
        if self._transport is None or self.closed or self._reader is not None:
            raise RuntimeError("get() needs an open connection with no request outstanding")
        self._reader = ResponseReader()
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            self._fail(ResponseError("bytes received with no request outstanding"))
            return
        try:
            response = reader.feed(data)
        except ResponseError as exc:
            self._fail(exc)
            return
        if response is not None:
            self._reader = None
            if not response.keep_alive:
                self.close()
            self._on_answer(self, response)

    def eof_received(self) -> bool | None:
        reader = self._reader
        if reader is not None:
            self._reader = None
            try:
                response = reader.eof()
            except ResponseError as exc:
                self.close()
                self._on_answer(self, exc)
                return None
            self.close()
            self._on_answer(self, response)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._reader is not None:
            self._reader = None
            self._on_answer(self, exc or ConnectionResetError("connection closed during the answer"))

    def close(self) -> None:
        """Close the connection; an answer under way is dropped without a callback."""
        self.closed = True
        self._reader = None
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: BaseException) -> None:
        self._reader = None
        self.close()
        self._on_answer(self, exc)
