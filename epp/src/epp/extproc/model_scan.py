"""Finding a JSON body's top-level ``model`` while the body is still arriving, without keeping it.

The front door refuses a model it will not route (unknown, or not allowed for the caller's key) as
soon as the body names it, rather than after buffering the whole body. :class:`ModelScanner` is fed
the body's chunks as they come and keeps only its place in the JSON (depth, whether it is inside a
string, the current top-level key) and, bounded, the top-level keys and the ``model`` value. Strings
are skipped by looking for their closing quote (``bytes.find``), so a 1 MB chunk of prompt costs
microseconds, not a Python loop per byte.

It only ever serves an early *refusal*: what is routed is decided on the whole body, parsed in full
(with a duplicated ``model`` key the full parse takes the last one; the scanner stops at the first,
so such a body may be refused early on its first ``model``, never routed on it).
"""

from __future__ import annotations

import json
import re

# What the scanner stops at outside strings; inside one it jumps to the next quote (memchr speed).
_STRUCTURAL = re.compile(rb'[{}\[\]:,"]')
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
            end = _string_end(chunk, start)
            if end < 0:
                self._keep(chunk)
                self._escaped = _ends_escaped(chunk, start)
                return None
            self._in_string = False
            self._keep(chunk[:end])
            kept, self._kept = self._kept, None
            if kept is not None and not self.done:
                self._string(bytes(kept))
            else:
                self._after_value()
            position = end + 1
        search = _STRUCTURAL.search
        while not self.done:
            found = search(chunk, position)
            if found is None:
                break
            at = found.start()
            char = chunk[at]
            if char != 0x22:
                self._punctuation(char)
                position = at + 1
                continue
            end = _string_end(chunk, at + 1)
            if end < 0:
                self._in_string = True
                self._escaped = _ends_escaped(chunk, at + 1)
                self._kept = bytearray() if self._matters() else None
                self._keep(chunk[at + 1:])
                break
            if self._matters():
                self._string(chunk[at + 1:end])
            else:
                self._after_value()
            position = end + 1
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

    def _punctuation(self, char: int) -> None:
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


def _string_end(chunk: bytes, start: int) -> int:
    """The index of the quote that closes a string whose content starts at ``start`` (-1: not in
    ``chunk``). A quote behind an odd run of backslashes is escaped."""
    while True:
        quote = chunk.find(b'"', start)
        if quote < 0:
            return -1
        first = quote
        while first > start and chunk[first - 1] == 0x5C:
            first -= 1
        if (quote - first) % 2 == 0:
            return quote
        start = quote + 1


def _ends_escaped(chunk: bytes, start: int) -> bool:
    """Whether the byte after ``chunk`` (inside a string from ``start``) is escaped."""
    tail = chunk[start:]
    return (len(tail) - len(tail.rstrip(b"\\"))) % 2 == 1
