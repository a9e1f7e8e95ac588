"""Every plugin type the EPP knows, by its upstream type name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from epp.scheduling.factory import PluginType
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


def _index(*groups: Iterable[PluginType[Any]]) -> dict[str, PluginType[Any]]:
    types: dict[str, PluginType[Any]] = {}
    for group in groups:
        for plugin_type in group:
            if plugin_type.type_name in types:
                raise RuntimeError(f"plugin type {plugin_type.type_name!r} registered twice")
            types[plugin_type.type_name] = plugin_type
    return types


PLUGIN_TYPES: dict[str, PluginType[Any]] = _index(
    label_selector.PLUGIN_TYPES,
    decode.PLUGIN_TYPES,
    queue.PLUGIN_TYPES,
    kv_cache_utilization.PLUGIN_TYPES,
    prefix_cache.PLUGIN_TYPES,
    prefix_affinity.PLUGIN_TYPES,
    active_request.PLUGIN_TYPES,
    load_aware.PLUGIN_TYPES,
    lora_affinity.PLUGIN_TYPES,
    max_score.PLUGIN_TYPES,
    random_choice.PLUGIN_TYPES,
    weighted_random.PLUGIN_TYPES,
    single.PLUGIN_TYPES,
)
