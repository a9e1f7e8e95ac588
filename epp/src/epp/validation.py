"""Plain messages from pydantic validation errors: each problem's field path and what is wrong.

Every place that validates a configuration or a command line with pydantic (the EPP's flags and
config files, the stack config, the one box's topology, the simulator's and the benchmark's flags)
turns a ``ValidationError`` into words through :func:`problems`, then writes the path its own way
(a flag, ``platform.models[0].name``, ``endpoints[1] (name 'b') field 'port'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

_VALUE_ERROR = "Value error, "


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem of a ``ValidationError``."""

    loc: tuple[int | str, ...]
    """Where, as pydantic says it: field names and list indices, outermost first."""
    kind: str
    """pydantic's error type (``missing``, ``extra_forbidden``, ``value_error``, ...)."""
    pydantic_message: str
    """pydantic's own message (``Value error, ...`` for a ``ValueError`` a validator raised)."""
    input: object
    cause: object
    """The exception a validator raised (``ctx["error"]``), else None."""

    @property
    def message(self) -> str:
        """What is wrong, in plain words: a validator's own message, without pydantic's prefix."""
        return self.pydantic_message.removeprefix(_VALUE_ERROR)

    def path(self, root: str = "") -> str:
        """The field path under ``root``: ``root.models[0].name`` (``models[0].name`` without one)."""
        return field_path(self.loc, root)


def field_path(loc: Sequence[int | str], root: str = "") -> str:
    """``("models", 0, "name")`` -> ``models[0].name``; under ``root``: ``root.models[0].name``."""
    text = root
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def problems(error: ValidationError) -> list[Problem]:
    """Every problem of ``error``, in pydantic's order (never the URL of its docs)."""
    found = []
    for item in error.errors(include_url=False):
        ctx = item.get("ctx") or {}
        found.append(
            Problem(
                loc=tuple(item["loc"]),
                kind=item["type"],
                pydantic_message=item["msg"],
                input=item.get("input"),
                cause=ctx.get("error"),
            )
        )
    return found


def describe(error: ValidationError, root: str = "", *, separator: str = "; ") -> str:
    """``path: message`` for every problem of ``error`` (just the message where there is no path)."""
    return separator.join(
        f"{where}: {p.message}" if (where := p.path(root)) else p.message for p in problems(error)
    )
