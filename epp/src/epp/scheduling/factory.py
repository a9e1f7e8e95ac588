"""PluginType: a plugin type name bound to its parameter model and its constructor."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from epp.scheduling.errors import ConfigError, describe
from epp.scheduling.framework import Handle, Plugin

P = TypeVar("P", bound=BaseModel)


class NoParameters(BaseModel):
    """For plugin types that take no parameters: any given one is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class PluginType(Generic[P]):
    type_name: str
    # The class built, which tells the plugin's kinds (Filter, Scorer, Picker, ProfileHandler, ...).
    plugin: type[Plugin]
    parameters: type[P]
    build: Callable[[str, P, Handle], Plugin]

    def create(self, name: str, raw: Mapping[str, Any] | None, handle: Handle) -> Plugin:
        """Validate ``raw`` parameters and build the plugin; ConfigError names the plugin and field."""
        params = self.validate(name, raw)
        try:
            return self.build(name, params, handle)
        except ValueError as exc:
            raise ConfigError(f"plugin {name!r}: {exc}") from None

    def validate(self, name: str, raw: Mapping[str, Any] | None) -> P:
        """The validated parameters of plugin ``name``, or ConfigError naming the plugin and field."""
        if raw is not None and not isinstance(raw, Mapping):
            raise ConfigError(f"plugin {name!r}: parameters must be a mapping, got {type(raw).__name__}")
        try:
            return self.parameters.model_validate(dict(raw or {}))
        except ValidationError as exc:
            accepted = [f.alias or key for key, f in self.parameters.model_fields.items()]
            field, message = describe(exc, accepted=accepted)[0]
            if message.startswith("unknown field"):
                message = "unknown parameter" + message.removeprefix("unknown field")
                if not accepted:
                    message = f"unknown parameter ({self.type_name} takes no parameters)"
            raise ConfigError(f"plugin {name!r}: parameter {field!r}: {message}") from None
