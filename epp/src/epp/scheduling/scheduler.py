"""Scheduler: runs the configured profiles for a request and returns the pick.

``schedule()`` is synchronous and does no I/O; the request path calls it on the event loop for every
request, so all assembly (plugin instances, per-profile plugin lists) happens once in ``from_config``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.config import DEFAULT_PICKER, DEFAULT_PROFILE_HANDLER, EndpointPickerConfig, check
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import (
    EndpointStateful,
    Filter,
    Handle,
    Picker,
    Plugin,
    ProfileHandler,
    ProfileOutcome,
    Scorer,
)
from epp.scheduling.profile import SchedulingProfile
from epp.scheduling.registry import PLUGIN_TYPES
from epp.scheduling.types import CycleState, LLMRequest, SchedulingResult


class Scheduler:
    def __init__(self, profiles: Sequence[SchedulingProfile], handler: ProfileHandler) -> None:
        if not profiles:
            raise ValueError("a scheduler needs at least one scheduling profile")
        self.profiles = {p.name: p for p in profiles}
        self.handler = handler
        self._profile_names = tuple(self.profiles)
        stateful: dict[int, EndpointStateful] = {}
        for profile in profiles:
            for plugin in (*profile.filters, *(s for s, _ in profile.scorers), profile.picker):
                if isinstance(plugin, EndpointStateful):
                    stateful[id(plugin)] = plugin
        self._stateful = tuple(stateful.values())

    @classmethod
    def from_config(cls, config: EndpointPickerConfig, rng: random.Random | None = None) -> Scheduler:
        """Build every plugin of ``config`` (ConfigError when the config is unusable)."""
        check(config)
        handle = Handle(rng if rng is not None else random.Random())
        plugins: dict[str, Plugin] = {}
        for spec in config.plugins:
            name = spec.plugin_name
            plugins[name] = PLUGIN_TYPES[spec.type].create(name, spec.parameters, handle)

        handlers = [p for p in plugins.values() if isinstance(p, ProfileHandler)]
        handler = handlers[0] if handlers else _default_handler(handle)

        profiles = []
        for profile in config.scheduling_profiles:
            filters: list[Filter] = []
            scorers: list[tuple[Scorer, float]] = []
            picker: Picker | None = None
            for ref in profile.plugins:
                plugin = plugins[ref.plugin_ref]
                if isinstance(plugin, Filter):
                    filters.append(plugin)
                if isinstance(plugin, Scorer):
                    scorers.append((plugin, 1.0 if ref.weight is None else ref.weight))
                if isinstance(plugin, Picker):
                    picker = plugin
            if picker is None:
                picker = _default_picker(handle)
            profiles.append(SchedulingProfile(profile.name, filters, scorers, picker))
        return cls(profiles, handler)

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
        )

    def forget(self, address: str) -> None:
        """The endpoint at ``address`` left the pool: drop every plugin's state about it."""
        for plugin in self._stateful:
            plugin.forget(address)


def _default_handler(handle: Handle) -> ProfileHandler:
    plugin = PLUGIN_TYPES[DEFAULT_PROFILE_HANDLER].create(DEFAULT_PROFILE_HANDLER, None, handle)
    if not isinstance(plugin, ProfileHandler):
        raise ConfigError(f"plugin {DEFAULT_PROFILE_HANDLER!r}: not a profile handler")
    return plugin


def _default_picker(handle: Handle) -> Picker:
    plugin = PLUGIN_TYPES[DEFAULT_PICKER].create(DEFAULT_PICKER, None, handle)
    if not isinstance(plugin, Picker):
        raise ConfigError(f"plugin {DEFAULT_PICKER!r}: not a picker")
    return plugin
