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

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from epp.scheduling.errors import ConfigError, describe
from epp.scheduling.framework import Filter, Handle, Picker, Plugin, ProfileHandler, Scorer
from epp.scheduling.params import Duration, Fraction, NonNegativeFloat, NonNegativeInt
from epp.scheduling.registry import PLUGIN_TYPES

API_VERSIONS = (
    "inference.networking.x-k8s.io/v1alpha1",
    "config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1",
)
DEFAULT_PICKER = "max-score-picker"
DEFAULT_PROFILE_HANDLER = "single-profile-handler"
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
    # Accepted for compatibility with upstream files; no gate changes this EPP's behaviour.
    feature_gates: list[str] = Field(default_factory=list, alias="featureGates")

    @field_validator("api_version")
    @classmethod
    def _known_api_version(cls, value: str) -> str:
        if value not in API_VERSIONS:
            raise ValueError(f"must be one of {', '.join(API_VERSIONS)}, got {value!r}")
        return value


def check(config: EndpointPickerConfig) -> None:
    """Raise ConfigError unless every plugin exists with valid parameters and every profile is sound."""
    kinds = _check_plugins(config)
    _check_profile_handler(config, kinds)
    for profile in config.scheduling_profiles:
        _check_profile(profile, kinds)


def _check_plugins(config: EndpointPickerConfig) -> dict[str, type[Plugin]]:
    """Every plugin's type and parameters; returns the plugin classes by plugin name."""
    kinds: dict[str, type[Plugin]] = {}
    for spec in config.plugins:
        name = spec.plugin_name
        if name in kinds:
            raise ConfigError(f"plugin {name!r}: name used by more than one plugin")
        plugin_type = PLUGIN_TYPES.get(spec.type)
        if plugin_type is None:
            raise ConfigError(
                f"plugin {name!r}: field 'type': unknown plugin type {spec.type!r} "
                f"(known types: {', '.join(sorted(PLUGIN_TYPES))})"
            )
        plugin_type.validate(name, spec.parameters)
        kinds[name] = plugin_type.plugin
    return kinds


def _check_profile_handler(config: EndpointPickerConfig, kinds: dict[str, type[Plugin]]) -> None:
    """At most one profile handler, able to run the configured profiles (unique names)."""
    profile_names = [p.name for p in config.scheduling_profiles]
    duplicates = sorted({n for n in profile_names if profile_names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"scheduling profile {duplicates[0]!r}: name used by more than one profile")
    handlers = [spec for spec in config.plugins if issubclass(kinds[spec.plugin_name], ProfileHandler)]
    if len(handlers) > 1:
        names = ", ".join(repr(spec.plugin_name) for spec in handlers)
        raise ConfigError(f"plugins {names}: only one profile handler may be configured")
    if not handlers:
        if len(profile_names) != 1:
            raise ConfigError(
                f"schedulingProfiles: {len(profile_names)} profiles need a profile handler plugin that runs "
                f"several; {DEFAULT_PROFILE_HANDLER} (the default) runs exactly one"
            )
        return
    spec = handlers[0]
    handler = PLUGIN_TYPES[spec.type].create(spec.plugin_name, spec.parameters, Handle())
    if isinstance(handler, ProfileHandler):
        try:
            handler.validate_profiles(profile_names)
        except ValueError as exc:
            raise ConfigError(f"plugin {spec.plugin_name!r}: {exc}") from None


def _check_profile(profile: SchedulingProfileSpec, kinds: dict[str, type[Plugin]]) -> None:
    """Known plugins, each once, filters/scorers/pickers only, weights on scorers, one picker at most."""
    where = f"scheduling profile {profile.name!r}"
    seen: set[str] = set()
    pickers: list[str] = []
    for ref in profile.plugins:
        name = ref.plugin_ref
        cls = kinds.get(name)
        if cls is None:
            raise ConfigError(
                f"{where}: pluginRef {name!r}: no plugin has this name (plugins: {', '.join(kinds)})"
            )
        if name in seen:
            raise ConfigError(f"{where}: pluginRef {name!r}: referenced more than once")
        seen.add(name)
        if issubclass(cls, ProfileHandler):
            raise ConfigError(
                f"{where}: pluginRef {name!r}: a profile handler is configured at the top level, "
                "not inside a scheduling profile"
            )
        if not issubclass(cls, Filter | Scorer | Picker):
            raise ConfigError(f"{where}: pluginRef {name!r}: not a filter, scorer or picker")
        if ref.weight is not None and not issubclass(cls, Scorer):
            raise ConfigError(f"{where}: pluginRef {name!r}: field 'weight': only scorers take a weight")
        if issubclass(cls, Picker):
            pickers.append(name)
    if len(pickers) > 1:
        raise ConfigError(f"{where}: more than one picker ({', '.join(map(repr, pickers))})")


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
        check(config)
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
