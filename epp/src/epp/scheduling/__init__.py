"""Endpoint scheduling: a plugin framework configured by an EndpointPickerConfig file.

- ``types``: LLMRequest (what is asked) and SchedulingResult (the pick)
- ``framework``: plugin interfaces (Filter, Scorer, Picker, ProfileHandler, PostPick, EndpointStateful)
- ``plugins/``: the built-in plugins, one per module; ``registry`` maps upstream type names to them
- ``config``: the EndpointPickerConfig models, ``load_config``/``parse_config``/``load_profile``
- ``profile``/``scheduler``: assembling and running profiles; ``saturation``: the load-shedding test
- shipped profiles live in ``epp/profiles/*.yaml``
"""

from epp.scheduling.config import (
    EndpointPickerConfig,
    load_config,
    load_profile,
    parse_config,
    shipped_profiles,
)
from epp.scheduling.errors import ConfigError
from epp.scheduling.saturation import SaturationDetector
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import LLMRequest, SchedulingResult

__all__ = [
    "ConfigError",
    "EndpointPickerConfig",
    "LLMRequest",
    "SaturationDetector",
    "Scheduler",
    "SchedulingResult",
    "load_config",
    "load_profile",
    "parse_config",
    "shipped_profiles",
]
