"""Small builders for the scheduling tests: endpoints, requests and plugins from the registry."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping
from typing import Any

from epp.datastore import Endpoint, InFlight, Metrics
from epp.scheduling import LLMRequest
from epp.scheduling.framework import Handle, Plugin
from epp.scheduling.registry import PLUGIN_TYPES

GEMMA = "google/gemma-2b-it"
PHI3 = "microsoft/Phi-3-mini-4k-instruct"
QWEN = "Qwen/Qwen2.5-3B-Instruct"

_hosts = itertools.count(1)


def endpoint(
    name: str,
    *,
    models: Iterable[str] = (GEMMA,),
    loras: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    waiting: int = 0,
    kv: float = 0.0,
    in_flight: int = 0,
    running_adapters: Iterable[str] = (),
    waiting_adapters: Iterable[str] = (),
    max_loras: int = 0,
    updated_at: float = 100.0,
    ip: str | None = None,
    port: int = 8000,
) -> Endpoint:
    """A routable endpoint serving ``models`` (plus ``loras``: adapter -> base) with the given load."""
    loras = dict(loras or {})
    n = next(_hosts)
    return Endpoint(
        name=name,
        ip=ip or f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}",
        port=port,
        labels=dict(labels or {}),
        models=frozenset(models) | frozenset(loras),
        lora_parents=loras,
        metrics=Metrics(
            waiting=waiting,
            kv_cache_usage=kv,
            running_adapters=frozenset(running_adapters),
            waiting_adapters=frozenset(waiting_adapters),
            max_loras=max_loras,
            updated_at=updated_at,
        ),
        load=InFlight(in_flight),
        models_known=True,
    )


def request(model: str = GEMMA, prompt: str = "", *, subset: Iterable[str] | None = None) -> LLMRequest:
    return LLMRequest(
        request_id=f"req-{next(_hosts)}",
        model=model,
        prompt=prompt,
        subset=None if subset is None else frozenset(subset),
    )


def plugin(type_name: str, parameters: Mapping[str, Any] | None = None, *, seed: int = 7) -> Any:
    """A plugin built through the registry, as a config would build it (typed Any for brevity)."""
    built: Plugin = PLUGIN_TYPES[type_name].create(type_name, parameters, Handle(random.Random(seed)))
    return built
