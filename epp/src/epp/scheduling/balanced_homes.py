"""Balanced homes: a model's recurring prefixes dealt out evenly over its pods, alike in every replica.

A rendezvous home alone (``prefix_affinity.PrefixAffinityScorer.home``) puts a binomial number of
groups on each pod: 16 groups over 4 pods often make 6 on one and 2 on another. The crowded home
then goes over the load bound and its groups spill, each replica to the pod its own view says, and a
group ends up cached on two pods. Replicas that cannot talk still see nearly the same recurring
prefixes (each gets a share of every group's requests), so each deals them out the same way:

* A prefix key seen at least ``MIN_SIGHTS`` times, the last within ``WINDOW`` seconds, is an
  *active group* of its model (at most ``MAX_ACTIVE``, the most recent; at most ``MAX_TRACKED`` keys
  tracked per model, the least recent dropped first).
* The active groups, in key order, go each to the first pod of its own rendezvous order that has
  fewer than ``ceil(groups / pods)``: consistent hashing with bounded loads, counted in groups
  rather than requests. The pods are those seen for the model within ``WINDOW`` and not forgotten.
* Rebuilt at most once per ``REBUILD_EVERY`` seconds, when a group became active, one expired or
  the pods changed. A key not active yet (a one-off prompt, a group's first sight) has no balanced
  home: the scorer uses its rendezvous home.

Two replicas with the same active groups and pods agree on every home; a group that only one of
them has seen active moves the others dealt after it at most, in that one replica.

Cost: per request two dictionary updates; per rebuild, ``groups x pods`` 64-bit mixes and a sort of
the pods per group (512 groups over 8 pods: a few milliseconds, at most once a second).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MIN_SIGHTS = 2
WINDOW = 60.0
REBUILD_EVERY = 0.25
MAX_ACTIVE = 512
MAX_TRACKED = 8192


@dataclass(slots=True)
class _Model:
    """One model's tracked keys (key -> (sights, last seen), least recent first), its pods (address ->
    last seen) and the homes last dealt (key -> address)."""

    seen: dict[int, tuple[int, float]] = field(default_factory=dict)
    pods: dict[str, float] = field(default_factory=dict)
    homes: dict[int, str] = field(default_factory=dict)
    built: float = -math.inf
    changed: bool = False


class BalancedHomes:
    """The balanced homes of every model's active groups (see the module's docstring)."""

    def __init__(self, weight: Callable[[int, str], int]) -> None:
        # weight(key, address): the rendezvous weight, the same function the rendezvous home uses.
        self._weight = weight
        self._models: dict[str, _Model] = {}

    def home(self, model: str, key: int, addresses: Sequence[str], now: float) -> str | None:
        """Record a sight of ``key`` at ``now`` among ``addresses`` (the request's candidates) and
        return its balanced home if it is an active group whose home is one of them; else None."""
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _Model()
        seen = state.seen
        sights = seen.pop(key, (0, now))[0] + 1  # popped and put back: the dict stays least recent first
        seen[key] = (sights, now)
        if sights == MIN_SIGHTS:
            state.changed = True
        if len(seen) > MAX_TRACKED:
            dropped = next(iter(seen))
            del seen[dropped]
            state.changed |= dropped in state.homes
        pods = state.pods
        for address in addresses:
            if address not in pods:
                state.changed = True
            pods[address] = now
        if now - state.built >= REBUILD_EVERY and (state.changed or self._expired(state, now)):
            self._deal(state, now)
        home = state.homes.get(key)
        return home if home is not None and home in addresses else None

    def forget(self, address: str) -> None:
        """A pod left the pool: the next rebuild deals its groups out to the others."""
        for state in self._models.values():
            if state.pods.pop(address, None) is not None:
                state.changed = True

    @staticmethod
    def _expired(state: _Model, now: float) -> bool:
        oldest_key = next(iter(state.seen), None)
        if oldest_key is not None and now - state.seen[oldest_key][1] > WINDOW:
            return True
        return any(now - seen > WINDOW for seen in state.pods.values())

    def _deal(self, state: _Model, now: float) -> None:
        since = now - WINDOW
        while state.seen and next(iter(state.seen.values()))[1] < since:
            del state.seen[next(iter(state.seen))]
        for address in [a for a, seen in state.pods.items() if seen < since]:
            del state.pods[address]
        recent = [key for key, (sights, _) in reversed(state.seen.items()) if sights >= MIN_SIGHTS]
        groups = sorted(recent[:MAX_ACTIVE])
        pods = sorted(state.pods)
        state.homes = {}
        if pods:
            cap = math.ceil(len(groups) / len(pods))
            dealt = dict.fromkeys(pods, 0)
            weight = self._weight
            for key in groups:
                for address in sorted(pods, key=lambda a: weight(key, a), reverse=True):
                    if dealt[address] < cap:
                        dealt[address] += 1
                        state.homes[key] = address
                        break
        state.built = now
        state.changed = False
