"""Balanced homes: a model's recurring prefixes dealt out evenly over its pods, alike in every replica.

A rendezvous home alone (``prefix_affinity.PrefixAffinityScorer.home``) puts a binomial number of
groups on each pod: 16 groups over 4 pods often make 6 on one and 2 on another. The crowded home
then goes over the load bound and its groups spill, each replica to the pod its own view says, and a
group ends up cached on two pods. Replicas that cannot talk still see nearly the same recurring
prefixes (each gets a share of every group's requests), so each deals them out the same way:

* A prefix key seen at least ``MIN_SIGHTS`` times, the last within ``WINDOW`` seconds, is an
  *active group* of its model (at most ``MAX_ACTIVE`` are dealt, the smallest keys: a choice every
  replica makes alike; at most ``MAX_TRACKED`` keys tracked per model, the least recent dropped
  first).
* The active groups, in key order, go each to the first pod of its own rendezvous order that has
  fewer than ``ceil(groups / pods)``: consistent hashing with bounded loads, counted in groups
  rather than requests. The pods are those seen for the model within ``WINDOW`` and not forgotten.
* Dealt again at most once per ``REBUILD_EVERY`` seconds, when a group became active or left, or
  the pods changed. A key not active yet (a one-off prompt, a group's first sight) has no balanced
  home: the scorer uses its rendezvous home.

Replicas that share their picks (``epp.peers``) pass each other every sighting (:meth:`sight`), so
they have the same active groups. Two replicas with the same active groups and pods agree on every
home. A group that only one of
them has seen active can move others in that one replica: the groups dealt after it, and, where it
raises ``ceil(groups / pods)``, some dealt before.

Cost: per request, the key's sighting and a comparison of the candidates with the last request's
(their pods' last-seen times written only when they change), and at most every ``REBUILD_EVERY``
seconds the expired entries dropped. Per
deal (only when a group became active or left, or the pods changed), a pass over the tracked keys,
a sort of the active ones and, per group, its rendezvous weight on each pod (the pods sorted only
when its first choice is full). Measured on a 2-CPU machine: 0.8 µs per request over 8 pods and
1.0 µs over 100 (one-off prompts); a deal of 512 groups 2.2 ms over 8 pods and 22.5 ms over 100, a
stall of the request that triggers it; dropping 8,192 expired keys at once 2.3 ms.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
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

    seen: OrderedDict[int, tuple[int, float]] = field(default_factory=OrderedDict)
    pods: dict[str, float] = field(default_factory=dict)
    homes: dict[int, str] = field(default_factory=dict)
    # The latest request's candidates and when they were last the candidates: their pods' last-seen
    # times are written when the candidates change and before a prune, not on every request.
    candidates: tuple[str, ...] = ()
    candidates_at: float = -math.inf
    built: float = -math.inf  # the last deal
    pruned: float = -math.inf
    changed: bool = False


class BalancedHomes:
    """The balanced homes of every model's active groups (see the module's docstring)."""

    def __init__(self, weight: Callable[[int, str], int]) -> None:
        # weight(key, address): the rendezvous weight, the same function the rendezvous home uses.
        self._weight = weight
        self._models: dict[str, _Model] = {}

    def home(self, model: str, key: int, addresses: tuple[str, ...], now: float) -> str | None:
        """Record a sight of ``key`` at ``now`` among ``addresses`` (the request's candidates) and
        return its balanced home if it is an active group (which may not be among ``addresses``);
        else None."""
        state = self._sight(model, key, now)
        if addresses != state.candidates:
            _note_candidates(state)  # the previous ones, at the time they were last the candidates
            state.candidates, state.candidates_at = addresses, now
            _note_candidates(state)  # these: a pod new to the model is in the next deal
        else:
            state.candidates_at = now
        if now - state.pruned >= REBUILD_EVERY:
            self._prune(state, now)
            state.pruned = now
        if state.changed and now - state.built >= REBUILD_EVERY:
            self._deal(state)
            state.built = now
        return state.homes.get(key)

    def sight(self, model: str, key: int, now: float) -> None:
        """Record a sight of ``key`` that another replica had (``epp.peers``): replicas that share
        their sightings have the same active groups, so they deal them alike (the next :meth:`home`
        deals)."""
        self._sight(model, key, now)

    def _sight(self, model: str, key: int, now: float) -> _Model:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _Model()
        seen = state.seen
        sights = seen.get(key, (0, now))[0] + 1
        seen[key] = (sights, now)
        seen.move_to_end(key)  # least recent first
        if sights == MIN_SIGHTS:
            state.changed = True
        if len(seen) > MAX_TRACKED:
            dropped, _ = seen.popitem(last=False)
            state.changed |= dropped in state.homes
        return state

    def forget(self, address: str) -> None:
        """A pod left the pool: the next rebuild deals its groups out to the others."""
        for state in self._models.values():
            _note_candidates(state)
            state.candidates = ()
            if state.pods.pop(address, None) is not None:
                state.changed = True

    @staticmethod
    def _prune(state: _Model, now: float) -> None:
        """Drop the keys and pods not seen within ``WINDOW``; a group or pod gone calls for a deal."""
        _note_candidates(state)
        since = now - WINDOW
        seen = state.seen
        while seen:
            key, (_, last) = next(iter(seen.items()))
            if last >= since:
                break
            seen.popitem(last=False)
            state.changed |= key in state.homes
        for address in [a for a, last in state.pods.items() if last < since]:
            del state.pods[address]
            state.changed = True

    def _deal(self, state: _Model) -> None:
        seen = state.seen
        groups = sorted(key for key, (sights, _) in seen.items() if sights >= MIN_SIGHTS)[:MAX_ACTIVE]
        pods = sorted(state.pods)
        state.homes = {}
        if pods:
            cap = math.ceil(len(groups) / len(pods))
            dealt = dict.fromkeys(pods, 0)
            weight = self._weight
            for key in groups:
                weights = {address: weight(key, address) for address in pods}
                first = max(pods, key=weights.__getitem__)
                if dealt[first] >= cap:  # full: down its rendezvous order to the first with room
                    order = sorted(pods, key=weights.__getitem__, reverse=True)
                    first = next(a for a in order if dealt[a] < cap)
                dealt[first] += 1
                state.homes[key] = first
        state.changed = False


def _note_candidates(state: _Model) -> None:
    """Write the latest candidates' last-seen time on their pods; a pod new to the model calls for a
    deal."""
    pods, at = state.pods, state.candidates_at
    for address in state.candidates:
        if address not in pods:
            state.changed = True
        pods[address] = at
