"""single-profile-handler: run the one scheduling profile; its pick is the answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from epp.scheduling.factory import NoParameters, PluginType
from epp.scheduling.framework import Handle, ProfileHandler, ProfileOutcome
from epp.scheduling.types import LLMRequest


class SingleProfileHandler(ProfileHandler):
    type_name = "single-profile-handler"

    def validate_profiles(self, profiles: Sequence[str]) -> None:
        if len(profiles) != 1:
            raise ValueError(f"needs exactly one scheduling profile, the config has {len(profiles)}")

    def pick_profiles(
        self, request: LLMRequest, profiles: Sequence[str], done: Mapping[str, ProfileOutcome]
    ) -> Sequence[str]:
        return () if done else profiles

    def primary(self, request: LLMRequest, done: Mapping[str, ProfileOutcome]) -> str:
        return next(iter(done))


def _build(name: str, parameters: NoParameters, handle: Handle) -> SingleProfileHandler:
    return SingleProfileHandler(name)


PLUGIN_TYPES = (PluginType("single-profile-handler", SingleProfileHandler, NoParameters, _build),)
