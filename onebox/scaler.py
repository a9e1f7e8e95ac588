"""The box's autoscaler: KEDA's semantics on the EPP's own metrics, for models with ``autoscaling``.

Every ``pollingSeconds`` it reads each EPP of the model's pool at ``/metrics`` (what KEDA's
Prometheus triggers read on GKE, ``components/autoscaling``) and derives four signals:

- ``queued``: the model's requests in the EPP's flow-control queue
  (``llm_d_epp_flow_control_queue_size{model_name=...}``, summed over the EPP replicas);
- ``waiting``: the requests waiting in its pods' own queues (``epp_endpoint_waiting_requests``);
- ``kv_cache``: its pods' average KV-cache usage (``epp_endpoint_kv_cache_usage_ratio``);
- ``in_flight``: requests routed to its pods and not finished (``epp_endpoint_in_flight_requests``).

Then, as KEDA and the HPA would:

- **activation** (0 -> 1): a model at zero wakes when ``queued`` exceeds ``activationQueue`` (the
  first queued request with the default 0), or anything else is active;
- **target per replica**: desired = the largest of ceil(queued / targetQueuePerReplica),
  ceil(waiting / targetWaitingPerReplica), ceil(current x kv_cache / targetKvCacheUsage) and 1 while
  a request is in flight, within [max(1, minReplicas), maxReplicas];
- **scale-down stabilization**: a lower recommendation is followed only once it has been the highest
  of the last ``idleSeconds`` (the HPA's window);
- **cooldown** (-> 0): with ``minReplicas: 0``, ``idleSeconds`` after the last activity the model
  goes to zero pods (KEDA's ``cooldownPeriod``).

The box (``onebox.box.OneBox``) starts and stops the pods and rewrites the EPP's endpoints file, so the
EPP discovers them as they come and go; the first request for a model at zero waits in the EPP's queue
(``noEndpointRequestTTL`` = ``wakeTimeout``) until its pod is up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yaml
from epp.contract import DEFAULT_PROFILE
from epp.flowcontrol.metrics import QUEUE_SIZE, names
from epp.scheduling.config import PROFILES_DIR, PROFILES_PACKAGE
from prometheus_client.parser import text_string_to_metric_families

from onebox.topology import Autoscaling, ModelSpec

_log = logging.getLogger("onebox.scaler")

QUEUE_METRIC = names(QUEUE_SIZE)[0]
WAITING_METRIC = "epp_endpoint_waiting_requests"
KV_CACHE_METRIC = "epp_endpoint_kv_cache_usage_ratio"
IN_FLIGHT_METRIC = "epp_endpoint_in_flight_requests"
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Signals:
    """What one poll read for one model."""

    queued: float = 0.0
    waiting: float = 0.0
    kv_cache: float = 0.0
    in_flight: float = 0.0


def read_signals(texts: Sequence[str], model: str, pods: set[str]) -> Signals:
    """The signals of served model ``model`` (its pods: ``pods``) from its pool's EPPs' metrics texts.

    The queue and in-flight counts are each EPP replica's own: summed. Waiting and KV cache are the
    pods' (every replica scrapes the same pod): the largest reading of each pod, then summed/averaged.
    """
    queued = in_flight = 0.0
    waiting: dict[str, float] = {}
    kv: dict[str, float] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == QUEUE_METRIC and labels.get("model_name") == model:
                    queued += sample.value
                    continue
                pod = labels.get("name")
                if pod not in pods:
                    continue
                if sample.name == IN_FLIGHT_METRIC:
                    in_flight += sample.value
                elif sample.name == WAITING_METRIC:
                    waiting[pod] = max(waiting.get(pod, 0.0), sample.value)
                elif sample.name == KV_CACHE_METRIC:
                    kv[pod] = max(kv.get(pod, 0.0), sample.value)
    kv_cache = sum(kv.values()) / len(kv) if kv else 0.0
    return Signals(queued, sum(waiting.values()), kv_cache, in_flight)


def active(scaling: Autoscaling, signals: Signals) -> bool:
    """KEDA's activation: any trigger above its activation threshold."""
    return (
        signals.queued > scaling.activation_queue
        or signals.waiting > 0
        or signals.in_flight > 0
        or signals.kv_cache > scaling.target_kv_cache_usage
    )


def recommended(scaling: Autoscaling, current: int, signals: Signals) -> int:
    """The HPA's replicas for these signals (the largest over the triggers), within [max(1, min), max]."""
    wanted = max(
        math.ceil(signals.queued / scaling.target_queue_per_replica),
        math.ceil(signals.waiting / scaling.target_waiting_per_replica),
        math.ceil(current * signals.kv_cache / scaling.target_kv_cache_usage),
        1 if signals.in_flight > 0 else 0,
    )
    return max(1, scaling.min_replicas, min(scaling.max_replicas, wanted))


@dataclass
class Decider:
    """One model's scaling decisions over time (pure: it is told the time and the signals)."""

    scaling: Autoscaling
    last_active: float
    _history: deque[tuple[float, int]] = field(default_factory=deque)

    def decide(self, now: float, current: int, signals: Signals) -> int:
        scaling = self.scaling
        busy = active(scaling, signals)
        if busy:
            self.last_active = now
        if current == 0:
            # Activation: KEDA takes the Deployment to 1, then the HPA to what the metrics ask.
            return recommended(scaling, 1, signals) if busy else 0
        target = recommended(scaling, current, signals)
        self._history.append((now, target))
        while self._history and self._history[0][0] < now - scaling.idle_seconds:
            self._history.popleft()
        if target < current:
            # Scale-down stabilization: the highest recommendation of the window.
            target = max(t for _, t in self._history)
        if scaling.min_replicas == 0 and now - self.last_active >= scaling.idle_seconds:
            return 0
        return target


class ScaledPods(Protocol):
    """What the scaler needs of the box."""

    def replicas(self, model: ModelSpec) -> int: ...

    def metrics_urls(self, model: ModelSpec) -> list[str]: ...

    def pod_names(self, model: ModelSpec) -> set[str]: ...

    async def scale(self, model: ModelSpec, replicas: int) -> None: ...


@dataclass
class ScaleEvent:
    """One change the scaler made (for logs, tests and benchmarks)."""

    at: float
    model: str
    before: int
    after: int
    signals: Signals


class Scaler:
    """Runs one loop per autoscaled model until stopped."""

    def __init__(
        self, box: ScaledPods, models: Sequence[ModelSpec], *, clock: Clock = time.monotonic
    ) -> None:
        self._box = box
        self._models = [m for m in models if m.autoscaling is not None]
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self.events: list[ScaleEvent] = []
        self.last: dict[str, Signals] = {}  # served name -> the latest signals read

    def start(self) -> None:
        for model in self._models:
            self._tasks.append(asyncio.create_task(self._loop(model), name=f"scaler {model.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _read(self, session: aiohttp.ClientSession, model: ModelSpec) -> Signals | None:
        texts = []
        for url in self._box.metrics_urls(model):
            try:
                async with session.get(url, raise_for_status=True) as response:
                    texts.append(await response.text())
            except (aiohttp.ClientError, TimeoutError) as exc:
                # An EPP restarting: KEDA keeps the replicas it has when its scaler fails.
                _log.warning("%s: cannot read %s (%s); keeping %d replicas", model.name, url, exc,
                             self._box.replicas(model))  # fmt: skip
                return None
        return read_signals(texts, model.served_name, self._box.pod_names(model))

    async def _loop(self, model: ModelSpec) -> None:
        scaling = model.autoscaling
        assert scaling is not None
        decider = Decider(scaling, last_active=self._clock())
        timeout = aiohttp.ClientTimeout(total=max(0.5, scaling.polling_seconds))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                signals = await self._read(session, model)
                if signals is not None:
                    self.last[model.served_name] = signals
                    current = self._box.replicas(model)
                    wanted = decider.decide(self._clock(), current, signals)
                    if wanted != current:
                        _log.info("%s: %d -> %d replicas (%s)", model.name, current, wanted, signals)
                        self.events.append(
                            ScaleEvent(self._clock(), model.served_name, current, wanted, signals)
                        )
                        try:
                            await self._box.scale(model, wanted)
                        except Exception as exc:  # a pod that failed to start: try again later
                            _log.warning("%s: scaling to %d failed: %s", model.name, wanted, exc)
                await asyncio.sleep(scaling.polling_seconds)


def epp_config_document(profile: str | None = None, config_file: Path | None = None) -> dict[str, Any]:
    """An EndpointPickerConfig as a mapping: ``config_file``'s, else the shipped ``profile``'s."""
    if config_file is not None:
        text = config_file.read_text(encoding="utf-8")
    else:
        name = profile or DEFAULT_PROFILE
        shipped = resources.files(PROFILES_PACKAGE).joinpath(PROFILES_DIR, f"{name}.yaml")
        text = shipped.read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ValueError(f"{config_file or profile}: not an EndpointPickerConfig mapping")
    return document


def with_flow_control(
    document: dict[str, Any], *, no_endpoint_ttl: float | None = None, queue_depth: int | None = None,
    **flow: object,
) -> dict[str, Any]:  # fmt: skip
    """``document`` with upstream's ``flowControl`` gate on; ``no_endpoint_ttl``: its
    ``noEndpointRequestTTL`` (seconds); ``queue_depth``: the saturation detector's
    ``queueDepthThreshold`` (0: a request waits in the EPP rather than in a pod's queue); ``flow``:
    other ``flowControl`` fields under their upstream names."""
    out = dict(document)
    gates = [g for g in out.get("featureGates", []) if str(g).partition("=")[0].strip() != "flowControl"]
    out["featureGates"] = [*gates, "flowControl"]
    section = {**(out.get("flowControl") or {}), **flow}
    if no_endpoint_ttl is not None:
        section["noEndpointRequestTTL"] = f"{no_endpoint_ttl:g}s"
    out["flowControl"] = section
    if queue_depth is not None:
        detector = dict(out.get("saturationDetector") or {})
        out["saturationDetector"] = {**detector, "queueDepthThreshold": queue_depth}
    return out
