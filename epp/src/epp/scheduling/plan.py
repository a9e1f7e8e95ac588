"""The scheduling plan: an EndpointPickerConfig compiled once, checked and typed, for the Scheduler.

``epp.scheduling.config.compile_config`` is the one place a config is checked; what it returns says,
for every profile, which plugins are its filters (in order), its weighted scorers and its picker, and
which plugin is the profile handler — with every default filled in and every parameter validated.
The Scheduler builds one instance per ``PluginPlan`` and runs the profiles; it checks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from epp.scheduling.framework import Filter, Handle, Picker, Plugin, ProfileHandler, Scorer
from epp.scheduling.registry import configure

PluginT = TypeVar("PluginT", bound=Plugin)


@dataclass(frozen=True, slots=True, eq=False)
class PluginPlan(Generic[PluginT]):
    """One plugin of the config: its name, class and validated parameters.

    A plugin that several profiles reference is one ``PluginPlan`` object, so it becomes one instance
    (with one index, say) shared by those profiles.
    """

    name: str
    plugin: type[PluginT]
    parameters: BaseModel

    def build(self, handle: Handle) -> PluginT:
        return configure(self.plugin, self.name, self.parameters, handle)


@dataclass(frozen=True, slots=True)
class ProfilePlan:
    name: str
    filters: tuple[PluginPlan[Filter], ...]
    # With their weights (an unset weight is 1).
    scorers: tuple[tuple[PluginPlan[Scorer], float], ...]
    # The profile's picker, or the default max-score-picker.
    picker: PluginPlan[Picker]


@dataclass(frozen=True, slots=True)
class SchedulingPlan:
    profiles: tuple[ProfilePlan, ...]
    # The configured profile handler, or the default single-profile-handler.
    handler: PluginPlan[ProfileHandler]
