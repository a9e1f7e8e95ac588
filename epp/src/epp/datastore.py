"""The EPP's view of its pool: endpoints, the models each one serves, and their latest metrics.

Discovery (Kubernetes or a static list) adds and removes endpoints, the model prober fills in
``Endpoint.models``, the metrics scraper fills in ``Endpoint.metrics``, and the request path reads
all of it without I/O. Everything here runs on the single asyncio event loop, so no locking.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class Metrics:
    """The latest scrape of one endpoint's vLLM ``/metrics``."""

    waiting: int = 0
    running: int = 0
    kv_cache_usage: float = 0.0
    running_adapters: frozenset[str] = frozenset()
    waiting_adapters: frozenset[str] = frozenset()
    max_loras: int = 0
    block_size: int = 16
    num_gpu_blocks: int = 0
    # time.monotonic() of the last successful scrape; 0.0 means never scraped.
    updated_at: float = 0.0

    def age(self, now: float | None = None) -> float:
        """Seconds since the last successful scrape (infinite when never scraped)."""
        if self.updated_at == 0.0:
            return float("inf")
        return (time.monotonic() if now is None else now) - self.updated_at


@dataclass(slots=True, eq=False)
class Endpoint:
    """One routable target: a pod IP and one of the pool's target ports."""

    name: str
    ip: str
    port: int
    labels: dict[str, str] = field(default_factory=dict)
    # Model ids the endpoint answers to (base models and LoRA adapters), from its own /v1/models.
    models: frozenset[str] = frozenset()
    # LoRA adapter id -> its base model id, from /v1/models `parent`.
    lora_parents: dict[str, str] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    # Requests this EPP has sent to the endpoint whose responses have not finished yet.
    in_flight: int = 0
    # False until the first successful /v1/models answer.
    models_known: bool = False
    address: str = field(init=False)

    def __post_init__(self) -> None:
        self.address = f"{self.ip}:{self.port}"

    def serves(self, model: str) -> bool:
        """True when the endpoint serves ``model`` as a base model or as a LoRA adapter."""
        return model in self.models

    @property
    def base_models(self) -> frozenset[str]:
        return frozenset(m for m in self.models if m not in self.lora_parents)


Listener = Callable[[str, "Endpoint | None"], None]


class Datastore:
    """Endpoints of one pool, keyed by ``ip:port``."""

    def __init__(self) -> None:
        self._endpoints: dict[str, Endpoint] = {}
        self._listeners: list[Listener] = []
        # Bumped on any change of membership or models; lets readers cache derived views.
        self.version = 0
        self.synced = False

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(address, endpoint_or_None)`` on every upsert (endpoint) and removal (None)."""
        self._listeners.append(listener)

    def upsert(self, endpoint: Endpoint) -> Endpoint:
        """Add an endpoint, or update name/labels of a known one (keeping its models and metrics)."""
        current = self._endpoints.get(endpoint.address)
        if current is None:
            self._endpoints[endpoint.address] = endpoint
            current = endpoint
        else:
            current.name = endpoint.name
            current.labels = endpoint.labels
        self.version += 1
        for listener in self._listeners:
            listener(current.address, current)
        return current

    def remove(self, address: str) -> Endpoint | None:
        endpoint = self._endpoints.pop(address, None)
        if endpoint is not None:
            self.version += 1
            for listener in self._listeners:
                listener(address, None)
        return endpoint

    def set_models(self, address: str, models: frozenset[str], lora_parents: dict[str, str]) -> None:
        endpoint = self._endpoints.get(address)
        if endpoint is None:
            return
        if endpoint.models != models or endpoint.lora_parents != lora_parents or not endpoint.models_known:
            endpoint.models = models
            endpoint.lora_parents = lora_parents
            endpoint.models_known = True
            self.version += 1

    def get(self, address: str) -> Endpoint | None:
        return self._endpoints.get(address)

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._endpoints.values())

    def __len__(self) -> int:
        return len(self._endpoints)

    def routable(self) -> list[Endpoint]:
        """Endpoints whose models are known: the candidates a request may be scheduled on."""
        return [e for e in self._endpoints.values() if e.models_known]

    def served_models(self) -> list[str]:
        """Sorted union of the models of all routable endpoints (what GET /v1/models lists)."""
        models: set[str] = set()
        for endpoint in self._endpoints.values():
            if endpoint.models_known:
                models.update(endpoint.models)
        return sorted(models)
