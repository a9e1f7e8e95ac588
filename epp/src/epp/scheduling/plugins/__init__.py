"""The built-in plugins, one per module; importing this package registers every one of them.

A new plugin is a module here whose class carries ``@register`` (``epp.scheduling.registry``), and
one line below.
"""

from epp.scheduling.plugins.filters import decode, label_selector
from epp.scheduling.plugins.pickers import max_score, random_choice, weighted_random
from epp.scheduling.plugins.profile_handlers import single
from epp.scheduling.plugins.scorers import (
    active_request,
    kv_cache_utilization,
    load_aware,
    lora_affinity,
    prefix_affinity,
    prefix_cache,
    queue,
)

__all__ = [
    "active_request",
    "decode",
    "kv_cache_utilization",
    "label_selector",
    "load_aware",
    "lora_affinity",
    "max_score",
    "prefix_affinity",
    "prefix_cache",
    "queue",
    "random_choice",
    "single",
    "weighted_random",
]
