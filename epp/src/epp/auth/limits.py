"""Requests per minute for one key, at one front-door replica.

The front door runs N replicas and none of them talks to another, so each enforces its share of a
key's ``requestsPerMinute``: ``ceil(requestsPerMinute / N)`` (never 0, so a key with fewer requests
per minute than there are replicas still gets through). Across the gateway a key then gets at most
``N * ceil(requestsPerMinute / N)`` requests per window, which is ``requestsPerMinute`` when N divides
it and at most ``requestsPerMinute + N - 1`` otherwise; it gets the whole ``requestsPerMinute`` only
when its requests spread over the replicas.

Within a replica the limit is a token bucket in its O(1) form (GCRA): a burst of ``limit`` requests is
allowed, then one more each ``window / limit`` seconds. A refused request costs nothing and is told
when the next one will be allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

DEFAULT_WINDOW = 60.0
# ``limit`` steps of ``window / limit`` may add up to a hair over ``window`` in floating point.
_SLACK = 1e-9

Clock = Callable[[], float]


def replica_share(requests_per_minute: int, replicas: int) -> int:
    """This replica's part of a key's limit: ``ceil(requests_per_minute / replicas)``."""
    if requests_per_minute <= 0 or replicas <= 0:
        raise ValueError(f"need a positive limit and replica count, got {requests_per_minute}/{replicas}")
    return -(-requests_per_minute // replicas)


class RateLimit:
    """``limit`` requests per ``window`` seconds for one key (its state is one float)."""

    __slots__ = ("_interval", "_ready_at", "limit", "window")

    def __init__(self, limit: int, window: float = DEFAULT_WINDOW) -> None:
        if limit <= 0 or window <= 0:
            raise ValueError(f"need a positive limit and window, got {limit} per {window} s")
        self.limit = limit
        self.window = window
        self._interval = window / limit
        # When the bucket is full again ("theoretical arrival time"); the past means full.
        self._ready_at = -math.inf

    def take(self, now: float) -> float:
        """Count one request at ``now``: 0.0 when it is allowed, else the seconds until one would be."""
        ready_at = max(self._ready_at, now) + self._interval
        wait = ready_at - now - self.window
        if wait > _SLACK:
            return wait
        self._ready_at = ready_at
        return 0.0


def retry_after_seconds(wait: float) -> int:
    """``Retry-After`` takes whole seconds: the wait rounded up, at least 1."""
    return max(1, math.ceil(wait))
