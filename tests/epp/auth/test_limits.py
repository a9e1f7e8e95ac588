"""A key's requests per minute at one front-door replica: its share, its burst, its refill."""

from __future__ import annotations

import pytest
from epp.auth.limits import RateLimit, replica_share, retry_after_seconds


@pytest.mark.parametrize(
    ("per_minute", "replicas", "share"),
    [(120, 1, 120), (120, 2, 60), (121, 2, 61), (100, 3, 34), (1, 2, 1), (5, 5, 1), (6, 5, 2)],
)
def test_each_replica_allows_the_limit_divided_by_the_replicas_rounded_up(
    per_minute: int, replicas: int, share: int
) -> None:
    assert replica_share(per_minute, replicas) == share
    # Together the replicas never allow less than the key's limit, and at most replicas - 1 more.
    assert per_minute <= share * replicas <= per_minute + replicas - 1


def test_a_share_needs_a_positive_limit_and_replica_count() -> None:
    with pytest.raises(ValueError, match="positive"):
        replica_share(10, 0)


def test_a_burst_of_the_limit_is_allowed_then_the_next_request_waits() -> None:
    limit = RateLimit(3, window=60.0)
    assert [limit.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limit.take(100.0)
    # One request comes back every window / limit seconds.
    assert wait == pytest.approx(20.0)


def test_a_refused_request_costs_nothing_and_the_limit_refills_with_time() -> None:
    limit = RateLimit(2, window=1.0)
    assert limit.take(0.0) == 0.0
    assert limit.take(0.0) == 0.0
    assert limit.take(0.1) > 0
    assert limit.take(0.2) > 0
    assert limit.take(0.5) == 0.0  # half a window later one request is back
    assert limit.take(0.5) > 0
    assert [limit.take(2.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]  # full again after a window


def test_a_large_limit_allows_exactly_its_burst_despite_floating_point() -> None:
    limit = RateLimit(7, window=0.3)
    allowed = sum(limit.take(5.0) == 0.0 for _ in range(10))
    assert allowed == 7


@pytest.mark.parametrize(("wait", "seconds"), [(0.01, 1), (1.0, 1), (1.2, 2), (29.5, 30)])
def test_retry_after_is_whole_seconds_rounded_up(wait: float, seconds: int) -> None:
    assert retry_after_seconds(wait) == seconds
