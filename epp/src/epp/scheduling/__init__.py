"""Endpoint scheduling: a plugin framework configured by an EndpointPickerConfig file.

Start-up: YAML → ``EndpointPickerConfig`` (pydantic) → ``config.plan`` (compiled once, by
``compile_config``: a frozen ``SchedulingPlan``) → ``Scheduler.from_plan`` (one instance per plugin).
Per request: ``Scheduler.schedule`` runs the plan's profiles; it checks nothing and sorts nothing.

- ``types``: LLMRequest (what is asked) and SchedulingResult (the pick)
- ``framework``: plugin interfaces (Filter, Scorer, Picker, ProfileHandler, PostPick, EndpointStateful)
- ``registry``: ``@register`` files a plugin class under its ``type_name`` (and ``aliases``)
- ``plugins/``: the built-in plugins, one per module, each registered by ``@register``
- ``prefix_index``: block hashing and the per-endpoint LRU index both prefix scorers use
- ``config``: the EndpointPickerConfig models, ``compile_config``, ``load_config``/``parse_config``/
  ``load_profile``; ``plan``: what a config compiles to
- ``profile``/``scheduler``: running profiles; ``saturation``: the load-shedding test
- shipped profiles live in ``epp/profiles/*.yaml``; ``docs/scheduling.md`` says how to add a plugin
"""

from epp.scheduling.config import (
    EndpointPickerConfig,
    compile_config,
    load_config,
    load_profile,
    parse_config,
    shipped_profiles,
)
from epp.scheduling.errors import ConfigError
from epp.scheduling.plan import SchedulingPlan
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import LLMRequest, SchedulingResult

__all__ = [
    "ConfigError",
    "EndpointPickerConfig",
    "LLMRequest",
    "SaturationDetector",
    "Scheduler",
    "SchedulingPlan",
    "SchedulingResult",
    "compile_config",
    "load_config",
    "load_profile",
    "parse_config",
    "shipped_profiles",
]
