"""Scheduler: runs the configured profiles for a request and returns the pick.

``schedule()`` is synchronous and does no I/O; the request path calls it on the event loop for every
request, so all assembly (plugin instances, per-profile plugin lists) happens once, in ``from_plan``,
from the plan the config compiled to (``EndpointPickerConfig.plan``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.config import EndpointPickerConfig
from epp.scheduling.framework import (
    CacheFeedback,
    EndpointStateful,
    Handle,
    PeerShared,
    Plugin,
    ProfileHandler,
    ProfileOutcome,
)
from epp.scheduling.plan import PluginPlan, PluginT, SchedulingPlan
from epp.scheduling.profile import SchedulingProfile
from epp.scheduling.types import CycleState, LLMRequest, SchedulingResult


class Scheduler:
    def __init__(self, profiles: Sequence[SchedulingProfile], handler: ProfileHandler) -> None:
        if not profiles:
            raise ValueError("a scheduler needs at least one scheduling profile")
        self.profiles = {p.name: p for p in profiles}
        self.handler = handler
        self._profile_names = tuple(self.profiles)
        stateful: dict[int, EndpointStateful] = {}
        feedback: dict[int, CacheFeedback] = {}
        shared: dict[str, PeerShared] = {}
        for profile in profiles:
            for plugin in (*profile.filters, *(s for s, _ in profile.scorers), profile.picker):
                if isinstance(plugin, EndpointStateful):
                    stateful[id(plugin)] = plugin
                if isinstance(plugin, CacheFeedback):
                    feedback[id(plugin)] = plugin
                if isinstance(plugin, PeerShared):
                    shared[plugin.name] = plugin
        self._stateful = tuple(stateful.values())
        self._feedback = tuple(feedback.values())
        self.shared = shared
        """The plugins whose learned state the replicas share, by name (``epp.peers``)."""
        self._keep_cycle = False

    @classmethod
    def from_plan(
        cls, plan: SchedulingPlan, rng: random.Random | None = None, *, replicas: int = 1
    ) -> Scheduler:
        """One instance of every plugin of ``plan``, arranged as it says (the plan is already checked);
        ``replicas``: how many EPP replicas serve the pool (``Handle.replicas``)."""
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        built = _Instances(Handle(rng if rng is not None else random.Random(), replicas))
        profiles = [
            SchedulingProfile(
                profile.name,
                [built.get(f) for f in profile.filters],
                [(built.get(s), weight) for s, weight in profile.scorers],
                built.get(profile.picker),
            )
            for profile in plan.profiles
        ]
        return cls(profiles, built.get(plan.handler))

    @classmethod
    def from_config(
        cls, config: EndpointPickerConfig, rng: random.Random | None = None, *, replicas: int = 1
    ) -> Scheduler:
        """The scheduler of ``config``'s plan (ConfigError when the config is unusable)."""
        return cls.from_plan(config.plan, rng, replicas=replicas)

    def schedule(
        self, request: LLMRequest, candidates: Sequence[Endpoint], *, explain: bool = False
    ) -> SchedulingResult:
        """Pick the endpoint for ``request`` among ``candidates`` (sync, no I/O); with ``explain`` the
        result's ``scores`` hold each candidate's weighted score per scorer (else they are empty)."""
        state: CycleState = {}
        done: dict[str, ProfileOutcome] = {}
        handler = self.handler
        while True:
            names = handler.pick_profiles(request, self._profile_names, done)
            if not names:
                break
            for name in names:
                done[name] = self.profiles[name].run(state, request, candidates, explain)
        primary = handler.primary(request, done)
        for name, outcome in done.items():
            if outcome.picks:
                chosen = outcome.picks[0]
                for plugin in self.profiles[name].post_pick:
                    plugin.post_pick(state, request, chosen)
        outcome = done[primary]
        picks = outcome.picks
        return SchedulingResult(
            endpoint=picks[0] if picks else None,
            endpoints=tuple(picks),
            scores=outcome.scores,
            profile=primary,
            rejected_by=outcome.rejected_by,
            cycle=state if self._keep_cycle else None,
        )

    def learn_from_cached_tokens(self) -> bool:
        """Have the plugins that keep a learned prefix index predict each pick's cache hit, for the
        answer's ``cached_tokens`` to settle; False when no plugin keeps one."""
        for plugin in self._feedback:
            plugin.learns_from_cached_tokens = True
        self._keep_cycle = bool(self._feedback)
        return self._keep_cycle

    def forget(self, address: str) -> None:
        """The endpoint at ``address`` left the pool: drop every plugin's state about it."""
        for plugin in self._stateful:
            plugin.forget(address)



class _Instances:
    """Builds each plugin plan once: a plugin several profiles reference is one instance."""

    def __init__(self, handle: Handle) -> None:
        self._handle = handle
        self._built: dict[int, Plugin] = {}

    def get(self, plan: PluginPlan[PluginT]) -> PluginT:
        instance = self._built.get(id(plan))
        if not isinstance(instance, plan.plugin):
            instance = self._built[id(plan)] = plan.build(self._handle)
        return instance
