"""Balanced homes: replicas that cannot talk deal a model's recurring prefixes out evenly, alike."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from epp.scheduling import balanced_homes
from epp.scheduling.balanced_homes import MIN_SIGHTS, REBUILD_EVERY, WINDOW, BalancedHomes
from epp.scheduling.plugins.scorers.prefix_affinity import stable_hash64

PODS = tuple(f"10.0.0.{i}:8000" for i in range(1, 5))
GROUPS = [stable_hash64(f"group {g}".encode()) for g in range(16)]
MODEL = "m"


def weight(key: int, address: str) -> int:
    return stable_hash64(f"{key} {address}".encode())


def rendezvous(key: int, pods: tuple[str, ...]) -> str:
    return max(pods, key=lambda a: weight(key, a))


Homes = dict[int, str | None]


def sighted(homes: BalancedHomes, keys: list[int], now: float, pods: tuple[str, ...] = PODS) -> Homes:
    """Each key's balanced home after a sight of it at ``now`` among ``pods``."""
    return {key: homes.home(MODEL, key, pods, now) for key in keys}


def test_sixteen_recurring_groups_go_four_to_each_of_four_pods_where_rendezvous_crowds_one() -> None:
    crowded = Counter(rendezvous(key, PODS) for key in GROUPS)
    assert max(crowded.values()) > 4  # the rendezvous homes alone are uneven for these groups
    homes = BalancedHomes(weight)
    for sight in range(MIN_SIGHTS):
        sighted(homes, GROUPS, now=sight * REBUILD_EVERY)
    dealt = sighted(homes, GROUPS, now=MIN_SIGHTS * REBUILD_EVERY)
    assert sorted(Counter(dealt.values()).values()) == [4, 4, 4, 4]


def test_two_replicas_that_see_the_groups_in_another_order_and_at_other_times_agree_on_every_home() -> None:
    first, second = BalancedHomes(weight), BalancedHomes(weight)
    rng = random.Random(1)
    for now in (0.0, 1.0, 2.0):
        for replica, offset in ((first, 0.0), (second, 0.37)):
            shuffled = tuple(rng.sample(PODS, len(PODS)))
            sighted(replica, rng.sample(GROUPS, len(GROUPS)), now + offset, shuffled)
    assert sighted(first, GROUPS, 3.0) == sighted(second, GROUPS, 3.4)
    assert None not in sighted(first, GROUPS, 3.5).values()


def test_a_prompt_seen_once_has_no_balanced_home_the_scorer_uses_its_rendezvous_home() -> None:
    homes = BalancedHomes(weight)
    for now in (0.0, 1.0):
        sighted(homes, GROUPS, now)
    one_off = stable_hash64(b"a one-off prompt")
    assert homes.home(MODEL, one_off, PODS, 2.0) is None
    assert homes.home("another model", GROUPS[0], PODS, 2.0) is None  # a model's groups are its own


def test_a_group_that_became_active_waits_for_the_next_deal() -> None:
    homes = BalancedHomes(weight)
    sighted(homes, GROUPS, 0.0)
    assert set(sighted(homes, GROUPS, 0.0).values()) == {None}  # active now, not dealt yet
    assert None not in sighted(homes, GROUPS, REBUILD_EVERY).values()


def test_groups_idle_for_longer_than_the_window_leave_and_the_rest_are_dealt_again() -> None:
    homes = BalancedHomes(weight)
    for now in (0.0, 1.0, 2.0):
        sighted(homes, GROUPS, now)
    busy = GROUPS[:8]
    for now in (3.0, WINDOW + 2.5, WINDOW + 3.0):
        sighted(homes, busy, now)
    dealt = sighted(homes, busy, WINDOW + 4.0)
    assert sorted(Counter(dealt.values()).values()) == [2, 2, 2, 2]
    assert homes.home(MODEL, GROUPS[-1], PODS, WINDOW + 4.0) is None  # idle since 2.0: forgotten


def test_a_pod_that_leaves_gets_no_group_and_the_others_take_its_groups_evenly() -> None:
    homes = BalancedHomes(weight)
    for now in (0.0, 1.0):
        sighted(homes, GROUPS, now)
    before = sighted(homes, GROUPS, 2.0)
    leaving = PODS[0]
    homes.forget(leaving)
    after = sighted(homes, GROUPS, 3.0, PODS[1:])
    assert leaving not in after.values()
    assert max(Counter(after.values()).values()) == math.ceil(len(GROUPS) / 3)
    # A group away from the leaving pod moves only if the pods' new share made room for another.
    kept = sum(before[key] == after[key] for key in GROUPS if before[key] != leaving)
    assert kept >= len(GROUPS) - 2 * math.ceil(len(GROUPS) / len(PODS))


def test_the_keys_tracked_per_model_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The least recent keys are dropped first."""
    monkeypatch.setattr(balanced_homes, "MAX_TRACKED", 20)
    homes = BalancedHomes(weight)
    for now in (0.0, 1.0):
        sighted(homes, GROUPS, now)
    for n in range(20):
        homes.home(MODEL, stable_hash64(f"one-off {n}".encode()), PODS, 2.0)
    assert set(sighted(homes, GROUPS[:4], 3.0).values()) == {None}  # pushed out by 20 newer keys


def test_over_the_most_groups_dealt_replicas_that_saw_them_in_other_orders_deal_the_same_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(balanced_homes, "MAX_ACTIVE", 8)
    first, second = BalancedHomes(weight), BalancedHomes(weight)
    for now in (0.0, 1.0, 2.0):
        sighted(first, GROUPS, now)
        sighted(second, GROUPS[::-1], now + 0.5)  # the most recent groups differ
    homes = sighted(first, GROUPS, 3.0), sighted(second, GROUPS[::-1], 3.5)
    assert homes[0] == homes[1]
    assert sum(home is not None for home in homes[0].values()) == 8
