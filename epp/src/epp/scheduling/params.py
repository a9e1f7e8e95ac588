"""Parameter types shared by plugin and detector configurations, with messages users can act on."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return value


def _non_negative_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a non-negative number, got {value!r}")
    return float(value)


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"must be a number between 0 and 1, got {value!r}")
    return float(value)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from a Go-style duration (``"200ms"``, ``"1m30s"``) or a plain number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"must be a positive duration, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        position, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            position = match.end()
        if text and position == len(text) and seconds > 0:
            return seconds
    raise ValueError(f"must be a positive duration such as '200ms' or '1s', got {value!r}")


PositiveInt = Annotated[int, BeforeValidator(_positive_int)]
NonNegativeFloat = Annotated[float, BeforeValidator(_non_negative_number)]
Fraction = Annotated[float, BeforeValidator(_fraction)]
Duration = Annotated[float, BeforeValidator(parse_duration)]


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a non-negative integer, got {value!r}")
    return value


NonNegativeInt = Annotated[int, BeforeValidator(_non_negative_int)]


class NoParameters(BaseModel):
    """For plugin types that take no parameters: any given one is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)
