"""The ``flowControl`` section of an EndpointPickerConfig, with llm-d-router's field names and meaning.

```yaml
featureGates: [flowControl]          # as upstream, the section is only respected with this gate
flowControl:
  maxRequests: 1000                  # all bands together (Kubernetes quantity: "1k" works)
  maxBytes: 1Gi                      # body bytes of all queued requests together
  defaultRequestTTL: 60s             # longest wait while the pool has endpoints ("0s": no limit)
  noEndpointRequestTTL: 60s          # longest wait while it has none: a model waking from zero
  defaultPriorityBand: {maxRequests: 5000, maxBytes: 1G}
  priorityBands:
  - {priority: 10, maxRequests: 100}
```

A request waits when every endpoint that could serve it is saturated (the config's
``saturationDetector``) or none serves it yet; over a TTL it leaves with a 429 (saturated) or a 503
(no endpoint came), both with ``Retry-After``. Upstream's fairness and ordering policy references are
accepted and must name the one policy this EPP has: round robin across fairness ids (tenants), first
come first served within one.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

_STRICT = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_QUANTITY_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                   "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

FAIRNESS_POLICIES = frozenset({"global-strict-fairness-policy", "round-robin-fairness-policy"})
ORDERING_POLICIES = frozenset({"fcfs-ordering-policy"})
DEFAULT_BAND_REQUESTS = 5000
DEFAULT_BAND_BYTES = 10**9
DEFAULT_TTL = 60.0


def _quantity(value: Any) -> int:
    """A Kubernetes resource quantity (``100``, ``1k``, ``1Gi``) as a whole number; 0 means unset."""
    if isinstance(value, bool):
        raise ValueError(f"must be a quantity such as 100, '1k' or '1Gi', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return value
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        raise ValueError(f"must be a quantity such as 100, '1k' or '1Gi', got {value!r}")
    return int(float(match.group(1)) * _QUANTITY_UNITS[match.group(2)])


def _ttl(value: Any) -> float:
    """Seconds from ``"60s"``, ``"1m30s"`` or a number; ``0``/``"0s"`` means no limit (infinite)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text, position, seconds = value.strip(), 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            position = match.end()
        if not text or position != len(text):
            raise ValueError(f"must be a duration such as '60s' or '1m30s', got {value!r}")
    else:
        raise ValueError(f"must be a duration such as '60s', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be a duration of 0 or more, got {value!r}")
    return math.inf if seconds == 0 else seconds


Quantity = Annotated[int, BeforeValidator(_quantity)]
TTL = Annotated[float, BeforeValidator(_ttl)]


class PriorityBandConfig(BaseModel):
    model_config = _STRICT

    priority: int = 0
    max_requests: Quantity = Field(0, alias="maxRequests")
    max_bytes: Quantity = Field(0, alias="maxBytes")
    fairness_policy_ref: str | None = Field(None, alias="fairnessPolicyRef")
    ordering_policy_ref: str | None = Field(None, alias="orderingPolicyRef")

    @field_validator("priority", mode="before")
    @classmethod
    def _whole(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, got {value!r}")
        return value

    @field_validator("fairness_policy_ref")
    @classmethod
    def _known_fairness(cls, value: str | None) -> str | None:
        if value is not None and value not in FAIRNESS_POLICIES:
            raise ValueError(f"must be one of {', '.join(sorted(FAIRNESS_POLICIES))}, got {value!r}")
        return value

    @field_validator("ordering_policy_ref")
    @classmethod
    def _known_ordering(cls, value: str | None) -> str | None:
        if value is not None and value not in ORDERING_POLICIES:
            raise ValueError(f"must be one of {', '.join(sorted(ORDERING_POLICIES))}, got {value!r}")
        return value

    @property
    def request_limit(self) -> int:
        return self.max_requests or DEFAULT_BAND_REQUESTS

    @property
    def byte_limit(self) -> int:
        return self.max_bytes or DEFAULT_BAND_BYTES


class FlowControlConfig(BaseModel):
    model_config = _STRICT

    max_requests: Quantity = Field(0, alias="maxRequests")
    max_bytes: Quantity = Field(0, alias="maxBytes")
    default_request_ttl: TTL = Field(DEFAULT_TTL, alias="defaultRequestTTL")
    no_endpoint_request_ttl: TTL = Field(DEFAULT_TTL, alias="noEndpointRequestTTL")
    default_priority_band: PriorityBandConfig = Field(
        default_factory=lambda: PriorityBandConfig.model_validate({}), alias="defaultPriorityBand"
    )
    default_negative_priority_band: PriorityBandConfig | None = Field(
        None, alias="defaultNegativePriorityBand"
    )
    priority_bands: list[PriorityBandConfig] = Field(default_factory=list, alias="priorityBands")

    @field_validator("priority_bands")
    @classmethod
    def _one_band_per_priority(cls, bands: list[PriorityBandConfig]) -> list[PriorityBandConfig]:
        seen: set[int] = set()
        for band in bands:
            if band.priority in seen:
                raise ValueError(f"priority {band.priority} has more than one band")
            seen.add(band.priority)
        return bands

    def band(self, priority: int) -> PriorityBandConfig:
        """The limits of ``priority``'s band: its own, else the (negative) default template's."""
        for band in self.priority_bands:
            if band.priority == priority:
                return band
        if priority < 0 and self.default_negative_priority_band is not None:
            return self.default_negative_priority_band
        return self.default_priority_band
