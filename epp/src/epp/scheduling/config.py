"""The EndpointPickerConfig file: pydantic models, loading, and the checks that make it usable.

Same format as the Gateway API Inference Extension's EPP config, so upstream configs work::

    apiVersion: inference.networking.x-k8s.io/v1alpha1
    kind: EndpointPickerConfig
    plugins:
    - {name: queue, type: queue-scorer}
    - {type: max-score-picker}                 # name defaults to the type
    schedulingProfiles:
    - name: default
      plugins: [{pluginRef: queue, weight: 2}, {pluginRef: max-score-picker}]
    saturationDetector: {queueDepthThreshold: 5, kvCacheUtilThreshold: 0.8, metricsStalenessThreshold: 200ms}

As upstream: a scorer's weight defaults to 1; a profile without a picker gets a ``max-score-picker``;
a config without a profile handler gets a ``single-profile-handler``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import epp.scheduling.plugins  # noqa: F401 (registers the built-in plugin types)
from epp.flowcontrol.config import FlowControlConfig
from epp.scheduling.errors import ConfigError, describe
from epp.scheduling.framework import Filter, Picker, Plugin, ProfileHandler, Scorer
from epp.scheduling.params import Duration, Fraction, NonNegativeFloat, NonNegativeInt, NoParameters
from epp.scheduling.plan import PluginPlan, ProfilePlan, SchedulingPlan
from epp.scheduling.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.plugins.profile_handlers.single import SingleProfileHandler
from epp.scheduling.registry import PLUGIN_TYPES

API_VERSIONS = (
    "inference.networking.x-k8s.io/v1alpha1",
    "config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1",
)
DEFAULT_PICKER = MaxScorePicker
DEFAULT_PROFILE_HANDLER = SingleProfileHandler
PROFILES_PACKAGE = "epp"
PROFILES_DIR = "profiles"

_STRICT = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PluginSpec(BaseModel):
    model_config = _STRICT

    name: str | None = Field(None, min_length=1)
    type: str = Field(min_length=1)
    parameters: dict[str, Any] | None = None

    @property
    def plugin_name(self) -> str:
        return self.name or self.type


class ProfilePluginRef(BaseModel):
    model_config = _STRICT

    plugin_ref: str = Field(alias="pluginRef", min_length=1)
    # Scorers only; None means 1.
    weight: NonNegativeFloat | None = None


class SchedulingProfileSpec(BaseModel):
    model_config = _STRICT

    name: str = Field(min_length=1)
    plugins: list[ProfilePluginRef] = Field(default_factory=list)


class SaturationDetectorConfig(BaseModel):
    """Thresholds past which an endpoint has no capacity; defaults as upstream."""

    model_config = _STRICT

    queue_depth_threshold: NonNegativeInt = Field(5, alias="queueDepthThreshold")
    kv_cache_util_threshold: Fraction = Field(0.8, alias="kvCacheUtilThreshold")
    # Seconds; written as a duration ("200ms") or a number of seconds.
    metrics_staleness_threshold: Duration = Field(0.2, alias="metricsStalenessThreshold")


class EndpointPickerConfig(BaseModel):
    model_config = _STRICT

    api_version: str = Field(API_VERSIONS[0], alias="apiVersion")
    kind: Literal["EndpointPickerConfig"] = "EndpointPickerConfig"
    plugins: list[PluginSpec] = Field(min_length=1)
    scheduling_profiles: list[SchedulingProfileSpec] = Field(alias="schedulingProfiles", min_length=1)
    saturation_detector: SaturationDetectorConfig = Field(
        default_factory=lambda: SaturationDetectorConfig.model_validate({}), alias="saturationDetector"
    )
    # Upstream's gates: ``flowControl`` turns the flow-control queue on; others are accepted and ignored.
    feature_gates: list[str] = Field(default_factory=list, alias="featureGates")
    flow_control: FlowControlConfig | None = Field(None, alias="flowControl")

    def gate(self, name: str) -> bool:
        """Whether feature gate ``name`` is on (``name`` or ``name=true``; the last entry wins)."""
        state = False
        for entry in self.feature_gates:
            gate, _, value = entry.partition("=")
            if gate.strip() == name:
                state = value.strip().lower() in ("", "true")
        return state

    def flow_control_config(self) -> FlowControlConfig | None:
        """The flow-control settings when the ``flowControl`` gate is on (defaults without a section)."""
        if not self.gate("flowControl"):
            return None
        return self.flow_control or FlowControlConfig.model_validate({})

    @field_validator("api_version")
    @classmethod
    def _known_api_version(cls, value: str) -> str:
        if value not in API_VERSIONS:
            raise ValueError(f"must be one of {', '.join(API_VERSIONS)}, got {value!r}")
        return value

    @cached_property
    def plan(self) -> SchedulingPlan:
        """The compiled plan (``compile_config``), computed on first use; ConfigError when unusable."""
        return compile_config(self)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; one with fields changed (``update``) compiles its own plan when asked."""
        copied = super().model_copy(update=update, deep=deep)
        if update:
            copied.__dict__.pop("plan", None)
        return copied


def compile_config(config: EndpointPickerConfig) -> SchedulingPlan:
    """The plan ``config`` describes, or ConfigError naming what is wrong: every plugin exists with
    valid parameters, the profile handler can run the profiles, every profile is sound.

    ``config.plan`` is this, computed once per config object.
    """
    plans = _plugins(config)
    handler = _profile_handler(config, plans)
    return SchedulingPlan(tuple(_profile(profile, plans) for profile in config.scheduling_profiles), handler)


@dataclass(slots=True)
class _Plans:
    """The config's plugins by name, each as one typed plan, sorted by kind."""

    names: list[str] = field(default_factory=list)
    filters: dict[str, PluginPlan[Filter]] = field(default_factory=dict)
    scorers: dict[str, PluginPlan[Scorer]] = field(default_factory=dict)
    pickers: dict[str, PluginPlan[Picker]] = field(default_factory=dict)
    handlers: dict[str, PluginPlan[ProfileHandler]] = field(default_factory=dict)

    def add(self, name: str, plugin: type[Plugin], parameters: BaseModel) -> None:
        self.names.append(name)
        # The registry lets a class be exactly one of these kinds.
        if issubclass(plugin, Filter):
            self.filters[name] = PluginPlan(name, plugin, parameters)
        elif issubclass(plugin, Scorer):
            self.scorers[name] = PluginPlan(name, plugin, parameters)
        elif issubclass(plugin, Picker):
            self.pickers[name] = PluginPlan(name, plugin, parameters)
        elif issubclass(plugin, ProfileHandler):
            self.handlers[name] = PluginPlan(name, plugin, parameters)


def _plugins(config: EndpointPickerConfig) -> _Plans:
    """Every plugin's type and parameters."""
    plans = _Plans()
    for spec in config.plugins:
        name = spec.plugin_name
        if name in plans.names:
            raise ConfigError(f"plugin {name!r}: name used by more than one plugin")
        plugin_type = PLUGIN_TYPES.get(spec.type)
        if plugin_type is None:
            raise ConfigError(
                f"plugin {name!r}: field 'type': unknown plugin type {spec.type!r} "
                f"(known types: {', '.join(sorted(PLUGIN_TYPES))})"
            )
        plans.add(name, plugin_type.plugin, plugin_type.validate(name, spec.parameters))
    return plans


def _profile_handler(config: EndpointPickerConfig, plans: _Plans) -> PluginPlan[ProfileHandler]:
    """At most one profile handler, able to run the configured profiles (unique names)."""
    profile_names = [p.name for p in config.scheduling_profiles]
    duplicates = sorted({n for n in profile_names if profile_names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"scheduling profile {duplicates[0]!r}: name used by more than one profile")
    if len(plans.handlers) > 1:
        names = ", ".join(map(repr, plans.handlers))
        raise ConfigError(f"plugins {names}: only one profile handler may be configured")
    if not plans.handlers:
        if len(profile_names) != 1:
            raise ConfigError(
                f"schedulingProfiles: {len(profile_names)} profiles need a profile handler plugin that runs "
                f"several; {DEFAULT_PROFILE_HANDLER.type_name} (the default) runs exactly one"
            )
        return PluginPlan(DEFAULT_PROFILE_HANDLER.type_name, DEFAULT_PROFILE_HANDLER, NoParameters())
    [handler] = plans.handlers.values()
    try:
        handler.plugin.validate_profiles(profile_names, handler.parameters)
    except ValueError as exc:
        raise ConfigError(f"plugin {handler.name!r}: {exc}") from None
    return handler


def _profile(profile: SchedulingProfileSpec, plans: _Plans) -> ProfilePlan:
    """Known plugins, each once, filters/scorers/pickers only, weights on scorers, one picker at most."""
    where = f"scheduling profile {profile.name!r}"
    seen: set[str] = set()
    filters: list[PluginPlan[Filter]] = []
    scorers: list[tuple[PluginPlan[Scorer], float]] = []
    pickers: list[PluginPlan[Picker]] = []
    for ref in profile.plugins:
        name = ref.plugin_ref
        if name not in plans.names:
            raise ConfigError(
                f"{where}: pluginRef {name!r}: no plugin has this name (plugins: {', '.join(plans.names)})"
            )
        if name in seen:
            raise ConfigError(f"{where}: pluginRef {name!r}: referenced more than once")
        seen.add(name)
        if name in plans.handlers:
            raise ConfigError(
                f"{where}: pluginRef {name!r}: a profile handler is configured at the top level, "
                "not inside a scheduling profile"
            )
        scorer = plans.scorers.get(name)
        if scorer is not None:
            scorers.append((scorer, 1.0 if ref.weight is None else ref.weight))
            continue
        if ref.weight is not None:
            raise ConfigError(f"{where}: pluginRef {name!r}: field 'weight': only scorers take a weight")
        if name in plans.filters:
            filters.append(plans.filters[name])
        else:
            pickers.append(plans.pickers[name])
    if len(pickers) > 1:
        raise ConfigError(f"{where}: more than one picker ({', '.join(repr(p.name) for p in pickers)})")
    picker = pickers[0] if pickers else _default_picker()
    return ProfilePlan(profile.name, tuple(filters), tuple(scorers), picker)


def _default_picker() -> PluginPlan[Picker]:
    parameters = DEFAULT_PICKER.Parameters.model_validate({})
    return PluginPlan(DEFAULT_PICKER.type_name, DEFAULT_PICKER, parameters)


def parse_config(text: str, source: str | None = None) -> EndpointPickerConfig:
    """Parse and check an EndpointPickerConfig from YAML (or JSON) text.

    ``source`` (a file name, say) prefixes error messages when given.
    """
    prefix = f"{source}: " if source else ""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{prefix}not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{prefix}expected a mapping with apiVersion, kind, plugins and schedulingProfiles")
    try:
        config = EndpointPickerConfig.model_validate(document)
    except ValidationError as exc:
        accepted = [f.alias or key for key, f in EndpointPickerConfig.model_fields.items()]
        problems = describe(exc, accepted=accepted)
        details = "; ".join(f"field {field!r}: {message}" for field, message in problems)
        raise ConfigError(prefix + details) from None
    try:
        config.plan  # noqa: B018 (compiled here, once: the check, and what the Scheduler runs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None
    return config


def load_config(path: str | Path) -> EndpointPickerConfig:
    """Read and check a user's EndpointPickerConfig file (startup only: this reads the disk)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    return parse_config(text, source=str(path))


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped with the EPP (``--profile NAME``)."""
    folder = resources.files(PROFILES_PACKAGE).joinpath(PROFILES_DIR)
    return sorted(e.name.removesuffix(".yaml") for e in folder.iterdir() if e.name.endswith(".yaml"))


def load_profile(name: str) -> EndpointPickerConfig:
    """A shipped profile by name: ``default``, ``proxy-performance`` or ``proxy-performance-by-backend``."""
    available = shipped_profiles()
    if name not in available:
        raise ConfigError(f"unknown profile {name!r} (available: {', '.join(available)})")
    resource = resources.files(PROFILES_PACKAGE).joinpath(PROFILES_DIR, f"{name}.yaml")
    return parse_config(resource.read_text(encoding="utf-8"), source=f"profile {name!r}")
