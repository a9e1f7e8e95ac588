"""ConfigError, and the translation of pydantic validation errors into messages naming the field."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError


class ConfigError(ValueError):
    """An EndpointPickerConfig that cannot be used: the message names the plugin or field at fault."""


def _location(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def describe(error: ValidationError, *, accepted: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(field path, message)`` pairs for every problem in ``error``, in plain words."""
    problems: list[tuple[str, str]] = []
    for item in error.errors():
        kind = item["type"]
        ctx = item.get("ctx") or {}
        if kind == "value_error" and "error" in ctx:
            message = str(ctx["error"])
        elif kind == "extra_forbidden":
            message = "unknown field"
            if accepted:
                message += f" (accepted: {', '.join(accepted)})"
        elif kind == "missing":
            message = "required"
        else:
            message = item["msg"][:1].lower() + item["msg"][1:]
        problems.append((_location(item["loc"]), message))
    return problems
