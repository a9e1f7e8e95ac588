"""Following a response through Envoy: its status, whether it streams, and the token usage it reports.

Non-streaming responses carry ``usage`` in their JSON body; streaming ones (``text/event-stream``)
carry it in the last data event when the client asked for ``stream_options.include_usage``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from epp.contract import UPSTREAM_CONNECT_FAILURE, UPSTREAM_FAILURE_HEADER

# Response bodies larger than this are passed through without being kept for usage parsing.
MAX_KEPT_BODY = 1 << 20
# For SSE only the tail matters: the usage event is the last data event before [DONE].
SSE_TAIL = 8192


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # ``prompt_tokens_details.cached_tokens``: prompt tokens the server found in its prefix cache;
    # None when the answer has no details (vLLM reports them with --enable-prompt-tokens-details).
    cached_tokens: int | None = None


# The last event of an OpenAI-style stream.
_DONE_EVENT = b"data: [DONE]"


class ResponseTracker:
    """Accumulates what is needed from a response's headers and body chunks."""

    __slots__ = (
        "_chunks", "_kept", "_tail", "connect_failed", "ended", "first_body_at", "from_gateway", "last_at",
        "status", "streaming",
    )

    def __init__(self) -> None:
        self.status = 0
        self.streaming = False
        # The gateway could not connect to the picked endpoint (its local reply says so).
        self.connect_failed = False
        # The gateway answered for the picked endpoint, which did not (refused, silent or reset).
        self.from_gateway = False
        self._chunks: list[bytes] = []
        self._kept = 0
        self._tail = b""
        # time.perf_counter() when the first body chunk was seen (0.0: none yet).
        self.first_body_at = 0.0
        # time.monotonic() when the headers or the latest body chunk came through (0.0: nothing yet).
        self.last_at = 0.0
        # The response's end came through this stream: the endpoint is done with the request.
        self.ended = False

    def on_headers(self, headers: dict[str, str]) -> None:
        self.last_at = time.monotonic()
        try:
            self.status = int(headers.get(":status", "0"))
        except ValueError:
            self.status = 0
        self.streaming = headers.get("content-type", "").startswith("text/event-stream")
        failure = headers.get(UPSTREAM_FAILURE_HEADER)
        self.from_gateway = failure is not None
        self.connect_failed = failure == UPSTREAM_CONNECT_FAILURE

    def on_body(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.last_at = time.monotonic()
        if not self.first_body_at:
            self.first_body_at = time.perf_counter()
        if self.streaming:
            tail = self._tail + chunk
            self._tail = tail[-SSE_TAIL:]
            return
        if self._kept + len(chunk) <= MAX_KEPT_BODY:
            self._chunks.append(chunk)
            self._kept += len(chunk)
        else:
            self._kept = MAX_KEPT_BODY + 1
            self._chunks.clear()

    def body_json(self) -> object | None:
        """The non-streaming body as JSON, when it was kept and parses."""
        if self.streaming or not self._chunks or self._kept > MAX_KEPT_BODY:
            return None
        try:
            document: object = json.loads(b"".join(self._chunks))
        except (ValueError, UnicodeDecodeError):
            return None
        return document

    @property
    def finished(self) -> bool:
        """A streamed answer's last event (``data: [DONE]``, as vLLM and OpenAI end a stream) came
        through: the endpoint is done with the request, even where the stream's very end did not
        (a client that leaves once it has the last event)."""
        if not self.streaming:
            return False
        tail = self._tail.rstrip()
        # An event of its own: at the start of a line (inside an event's JSON a line break is
        # escaped, so "data: [DONE]" quoted in a token's text never follows a raw newline).
        n = len(_DONE_EVENT)
        return tail.endswith(_DONE_EVENT) and (len(tail) == n or tail[-n - 1] in b"\r\n")

    def sse_tail(self) -> bytes:
        """The last bytes of a streamed answer (up to ``SSE_TAIL``)."""
        return self._tail

    def usage(self) -> Usage | None:
        if self.streaming:
            return _usage_from_sse(self._tail)
        document = self.body_json()
        return _usage_from(document.get("usage") if isinstance(document, dict) else None)

    def model_not_found(self) -> bool:
        """A backend 404 saying the model does not exist (vLLM's answer to a model it does not serve)."""
        if self.status != 404:
            return False
        document = self.body_json()
        if not isinstance(document, dict):
            return False
        error = document.get("error")
        if isinstance(error, dict):
            text = f"{error.get('message', '')} {error.get('type', '')} {error.get('code', '')}"
        else:
            text = str(document.get("message", ""))
        return "model" in text.lower()


def _usage_from(value: object) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = value.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if not isinstance(cached, int) or isinstance(cached, bool):
        cached = None
    return Usage(prompt, completion, cached)


def _usage_from_sse(tail: bytes) -> Usage | None:
    for line in reversed(tail.split(b"\n")):
        line = line.strip()
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        try:
            event = json.loads(line[5:])
        except (ValueError, UnicodeDecodeError):
            continue
        usage = _usage_from(event.get("usage") if isinstance(event, dict) else None)
        if usage is not None:
            return usage
    return None
