"""Finding a JSON body's top-level ``model`` while the body is still arriving, without keeping it.

The front door refuses a model it will not route (unknown, or not allowed for the caller's key) as
soon as the body names it, rather than after buffering the whole body. :class:`ModelScanner` is fed
the body's chunks as they come and keeps only its place in the JSON (depth, whether it is inside a
string, the current top-level key) and, bounded, the top-level keys and the ``model`` value. Strings
are skipped by a compiled pattern, so a chunk costs C-speed scanning, not a Python loop per byte.

It only ever serves an early *refusal*: what is routed is decided on the whole body, parsed in full
(with a duplicated ``model`` key the full parse takes the last one; the scanner stops at the first,
so such a body may be refused early on its first ``model``, never routed on it).
"""

from __future__ import annotations

import json
import re

# A whole string, a structural character, or a string whose closing quote is not in this chunk.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|"', re.S)
# The rest of a string that began in an earlier chunk, up to its closing quote.
_STRING_REST = re.compile(rb'(?:[^"\\]|\\.)*"', re.S)
# Keys and a model name longer than this are not followed (the full parse still sees them).
MAX_KEPT = 4096

_KEY, _COLON, _VALUE, _COMMA = range(4)


class ModelScanner:
    """Feed the chunks of a JSON object; ``model`` is its top-level ``model`` string once seen, and
    ``done`` turns True once nothing more will be found (found, absent, or not an object)."""

    __slots__ = ("_depth", "_escaped", "_expect", "_in_string", "_kept", "_key", "done", "model")

    def __init__(self) -> None:
        self.model: str | None = None
        self.done = False
        self._depth = 0
        self._expect = _KEY
        self._key = b""
        self._in_string = False
        # The first byte of the next chunk is escaped (a chunk ended inside a string on a backslash).
        self._escaped = False
        # The part of a string seen so far, when the string matters (a top-level key or the model).
        self._kept: bytearray | None = None

    def feed(self, chunk: bytes) -> str | None:
        """Scan one more chunk; the model, once known."""
        if self.done:
            return self.model
        position = 0
        if self._in_string:
            start = 1 if self._escaped else 0
            rest = _STRING_REST.match(chunk, start)
            if rest is None:
                self._keep(chunk)
                self._escaped = _ends_escaped(chunk, start)
                return None
            self._in_string = False
            self._keep(chunk[: rest.end() - 1])
            kept, self._kept = self._kept, None
            if kept is not None:
                self._string(bytes(kept))
            position = rest.end()
        for match in _TOKEN.finditer(chunk, position):
            if self.done:
                break
            token = match.group()
            if token == b'"':
                self._in_string = True
                self._escaped = _ends_escaped(chunk, match.end())
                self._kept = bytearray() if self._matters() else None
                self._keep(chunk[match.end():])
                break
            if token[0] == 0x22:  # a whole string
                if self._matters():
                    self._string(token[1:-1])
                else:
                    self._after_value()
            else:
                self._punctuation(token)
        return self.model

    def _matters(self) -> bool:
        if self._depth != 1:
            return False
        return self._expect == _KEY or (self._expect == _VALUE and self._key == b"model")

    def _keep(self, part: bytes) -> None:
        if self._kept is None:
            return
        if len(self._kept) + len(part) > MAX_KEPT:
            self.done = True  # too long to be worth following: the full parse decides
            self._kept = None
            return
        self._kept += part

    def _string(self, content: bytes) -> None:
        if self._depth != 1:
            return
        if self._expect == _KEY:
            self._key = content
            self._expect = _COLON
            return
        if self._expect == _VALUE and self._key == b"model":
            try:
                value = json.loads(b'"' + content + b'"')
            except ValueError:
                value = None
            self.model = value if isinstance(value, str) and value else None
            self.done = True
            return
        self._after_value()

    def _after_value(self) -> None:
        if self._depth == 1 and self._expect == _VALUE:
            self._expect = _COMMA

    def _punctuation(self, token: bytes) -> None:
        char = token[0]
        if char in b"{[":
            if self._depth == 0 and char != 0x7B:
                self.done = True  # not an object
                return
            self._depth += 1
            if self._depth == 1:
                self._expect = _KEY
        elif char in b"}]":
            self._depth -= 1
            if self._depth <= 0:
                self.done = True  # the object ended without a model
            elif self._depth == 1:
                self._after_value()
        elif self._depth == 1:
            self._expect = _VALUE if char == 0x3A else _KEY


def _ends_escaped(chunk: bytes, start: int) -> bool:
    """Whether the byte after ``chunk`` (inside a string from ``start``) is escaped."""
    tail = chunk[start:]
    return (len(tail) - len(tail.rstrip(b"\\"))) % 2 == 1
