"""Every plugin type the EPP knows, by its upstream type name: filled by ``@register`` on each class.

Every kind of plugin (filter, scorer, picker, profile handler) registers the same way::

    @register
    class QueueScorer(Scorer):
        type_name = "queue-scorer"

The built-in plugins register when ``epp.scheduling.plugins`` is imported (``epp.scheduling``
imports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from epp.scheduling.errors import ConfigError, describe
from epp.scheduling.framework import Filter, Handle, Picker, Plugin, ProfileHandler, Scorer

KINDS: tuple[type[Plugin], ...] = (Filter, Scorer, Picker, ProfileHandler)

PluginClass = TypeVar("PluginClass", bound=type[Plugin])


@dataclass(frozen=True, slots=True)
class PluginType:
    """A plugin class under one of its type names (its ``type_name`` or an alias)."""

    type_name: str
    plugin: type[Plugin]

    def validate(self, name: str, raw: Mapping[str, Any] | None) -> BaseModel:
        """The validated parameters of plugin ``name``, or ConfigError naming the plugin and field."""
        model = self.plugin.Parameters
        if raw is not None and not isinstance(raw, Mapping):
            raise ConfigError(f"plugin {name!r}: parameters must be a mapping, got {type(raw).__name__}")
        try:
            return model.model_validate(dict(raw or {}))
        except ValidationError as exc:
            accepted = [f.alias or key for key, f in model.model_fields.items()]
            field, message = describe(exc, accepted=accepted)[0]
            if message.startswith("unknown field"):
                message = "unknown parameter" + message.removeprefix("unknown field")
                if not accepted:
                    message = f"unknown parameter ({self.type_name} takes no parameters)"
            raise ConfigError(f"plugin {name!r}: parameter {field!r}: {message}") from None

    def create(self, name: str, raw: Mapping[str, Any] | None, handle: Handle) -> Plugin:
        """Validate ``raw`` parameters and build the plugin; ConfigError names the plugin and field."""
        return configure(self.plugin, name, self.validate(name, raw), handle)


PluginT = TypeVar("PluginT", bound=Plugin)


def configure(plugin: type[PluginT], name: str, parameters: BaseModel, handle: Handle) -> PluginT:
    """``plugin.configure`` with validated ``parameters``; its ValueError becomes a ConfigError."""
    try:
        return plugin.configure(name, parameters, handle)
    except ValueError as exc:
        raise ConfigError(f"plugin {name!r}: {exc}") from None


PLUGIN_TYPES: dict[str, PluginType] = {}


def register(plugin: PluginClass) -> PluginClass:
    """Class decorator: make ``plugin`` configurable under its ``type_name`` and ``aliases``."""
    kinds = [kind.__name__ for kind in KINDS if issubclass(plugin, kind)]
    if len(kinds) != 1:
        raise TypeError(f"{plugin.__name__}: a plugin is exactly one of {[k.__name__ for k in KINDS]}")
    for type_name in (plugin.type_name, *plugin.aliases):
        if type_name in PLUGIN_TYPES:
            raise TypeError(f"plugin type {type_name!r} registered twice")
        PLUGIN_TYPES[type_name] = PluginType(type_name, plugin)
    return plugin
