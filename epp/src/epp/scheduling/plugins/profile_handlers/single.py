"""single-profile-handler: run the one scheduling profile; its pick is the answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from epp.scheduling.framework import ProfileHandler, ProfileOutcome
from epp.scheduling.registry import register
from epp.scheduling.types import LLMRequest


@register
class SingleProfileHandler(ProfileHandler):
    type_name = "single-profile-handler"

    @classmethod
    def validate_profiles(cls, profiles: Sequence[str], parameters: Any = None) -> None:
        if len(profiles) != 1:
            raise ValueError(f"needs exactly one scheduling profile, the config has {len(profiles)}")

    def pick_profiles(
        self, request: LLMRequest, profiles: Sequence[str], done: Mapping[str, ProfileOutcome]
    ) -> Sequence[str]:
        return () if done else profiles

    def primary(self, request: LLMRequest, done: Mapping[str, ProfileOutcome]) -> str:
        return next(iter(done))

