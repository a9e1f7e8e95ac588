"""Discovery and state: who the pool's endpoints are, which models they serve, how loaded they are.

- ``static.py``: a fixed ``--endpoints`` list or an ``--endpoints-file`` YAML re-read on change.
- ``kubernetes.py``: the InferencePool's ready Pods, one endpoint per target port (lightkube).
- ``models.py``: each endpoint's own ``/v1/models`` -> ``Endpoint.models`` / ``lora_parents``.
- ``metrics.py`` + ``vllm_metrics.py``: each endpoint's ``/metrics`` -> ``Endpoint.metrics``.
- ``ejection.py``: endpoints whose scrapes fail or whose connections are refused leave rotation.
- ``_workers.py``: the one-task-per-endpoint machinery the prober and the scraper share.

Typical use (what ``epp.cli`` does)::

    source = build_source(datastore, endpoints="127.0.0.1:8001,127.0.0.1:8002")
    #   or build_source(datastore, endpoints_file=Path("pool.yaml"))
    #   or build_source(datastore, pool_name="gemma", pool_namespace=None)   # namespace: $POD_NAMESPACE...
    async with aiohttp.ClientSession() as session:
        async with DiscoveryRunner(datastore, source, session,
                                   metrics_interval=0.05, models_interval=10.0) as runner:
            ...                                   # serve; datastore.synced turns True after the first sync
            runner.request_refresh("10.0.0.7:8000")   # a backend answered model-not-found

``on_error`` (optional, on both) is called with ``"static"``, ``"kubernetes"``, ``"models"`` or
``"metrics"`` for every discovery error, e.g. to increment a Prometheus counter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Protocol

import aiohttp

from epp.datastore import Datastore
from epp.discovery._workers import ErrorCallback
from epp.discovery.ejection import EjectionPolicy, Ejector
from epp.discovery.kubernetes import (
    InferencePool,
    KubernetesConfigError,
    KubernetesDiscovery,
    PoolSpecError,
    default_namespace,
)
from epp.discovery.metrics import MetricsScraper
from epp.discovery.models import ModelListError, ModelProber, parse_model_list
from epp.discovery.static import (
    EndpointsFileError,
    StaticDiscovery,
    StaticEndpoint,
    parse_endpoint_list,
    parse_endpoints_yaml,
)
from epp.discovery.vllm_metrics import MetricsParseError, parse_vllm_metrics

__all__ = [
    "DiscoveryRunner",
    "EjectionPolicy",
    "Ejector",
    "EndpointSource",
    "EndpointsFileError",
    "InferencePool",
    "KubernetesConfigError",
    "KubernetesDiscovery",
    "MetricsParseError",
    "MetricsScraper",
    "ModelListError",
    "ModelProber",
    "PoolSpecError",
    "StaticDiscovery",
    "StaticEndpoint",
    "build_source",
    "check_endpoint_source",
    "default_namespace",
    "parse_endpoint_list",
    "parse_endpoints_yaml",
    "parse_model_list",
    "parse_vllm_metrics",
]

log = logging.getLogger(__name__)


class EndpointSource(Protocol):
    """Adds and removes endpoints in the datastore while :meth:`run` runs (until cancelled)."""

    name: str
    errors: int

    async def run(self) -> None: ...


def check_endpoint_source(
    *,
    pool_name: str | None = None,
    pool_namespace: str | None = None,
    endpoints_file: Path | None = None,
    endpoints: str | None = None,
) -> None:
    """The ``epp`` command's rule on where endpoints come from: exactly one of ``--pool-name``,
    ``--endpoints-file`` and ``--endpoints``; ``--pool-namespace`` only with ``--pool-name``.

    Raises ``ValueError`` naming the flags given. The settings (``epp.settings.EppSettings``) and
    :func:`build_source` both apply it.
    """
    given = [
        flag
        for flag, value in (
            ("--pool-name", pool_name),
            ("--endpoints-file", endpoints_file),
            ("--endpoints", endpoints),
        )
        if value
    ]
    if len(given) != 1:
        raise ValueError(
            "exactly one endpoint source is needed: --pool-name, --endpoints-file or --endpoints"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if pool_namespace and not pool_name:
        raise ValueError("--pool-namespace only applies with --pool-name")


def build_source(
    datastore: Datastore,
    *,
    pool_name: str | None = None,
    pool_namespace: str | None = None,
    endpoints_file: Path | None = None,
    endpoints: str | None = None,
    on_error: ErrorCallback | None = None,
) -> EndpointSource:
    """The endpoint source for the ``epp`` flags (:func:`check_endpoint_source`).

    Raises ``ValueError`` naming what is wrong: ``EndpointsFileError`` for a bad list or file,
    ``KubernetesConfigError`` when --pool-name is given but no Kubernetes configuration is found.
    """
    check_endpoint_source(
        pool_name=pool_name, pool_namespace=pool_namespace, endpoints_file=endpoints_file, endpoints=endpoints
    )
    if pool_name:
        return KubernetesDiscovery(datastore, pool_namespace, pool_name, on_error=on_error)
    if endpoints_file is not None:
        return StaticDiscovery(datastore, file=endpoints_file, on_error=on_error)
    assert endpoints is not None
    return StaticDiscovery(datastore, parse_endpoint_list(endpoints), on_error=on_error)


class DiscoveryRunner:
    """Runs an endpoint source, the model prober and the metrics scraper as tasks.

``ejector`` takes endpoints out of rotation from the scraper's results and from what the picker
reports (``connect_failed`` / ``answered``), per ``ejection``.

    ``async with`` starts them and stops them cleanly on exit. ``failure`` holds the exception of
    a task that died (e.g. no Kubernetes configuration); it is also logged, and ``failed`` is set:
    the picker is blind from then on (its health turns NOT_SERVING on it).
    """

    def __init__(
        self,
        datastore: Datastore,
        source: EndpointSource,
        session: aiohttp.ClientSession,
        metrics_interval: float = 0.05,
        models_interval: float = 10.0,
        *,
        metrics_timeout: float = 0.5,
        models_timeout: float = 2.0,
        on_error: ErrorCallback | None = None,
        ejection: EjectionPolicy | None = None,
        on_eject: Callable[[str], None] | None = None,
    ) -> None:
        self.datastore = datastore
        self.source = source
        self.prober = ModelProber(
            datastore, session, interval=models_interval, timeout=models_timeout, on_error=on_error
        )
        # Ejection follows the scraper (active) and, through ``ejector``, routed requests (passive).
        self.ejector = Ejector(datastore, ejection, on_eject=on_eject)
        self.scraper = MetricsScraper(
            datastore, interval=metrics_interval, timeout=metrics_timeout, on_error=on_error,
            ejector=self.ejector,
        )
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> DiscoveryRunner:
        loop = asyncio.get_running_loop()
        # Prober and scraper first, so they see the source's first endpoints as they arrive.
        for name, coroutine in (
            ("model-prober", self.prober.run()),
            ("metrics-scraper", self.scraper.run()),
            (f"discovery-{self.source.name}", self.source.run()),
        ):
            task = loop.create_task(coroutine, name=name)
            task.add_done_callback(self._finished)
            self._tasks.append(task)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks, self._tasks = self._tasks, []
        for task in reversed(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def request_refresh(self, address: str) -> bool:
        """Re-probe ``/v1/models`` of the endpoint at ``address`` now; False when none is followed."""
        return self.prober.request_refresh(address)

    @property
    def errors(self) -> dict[str, int]:
        """Error counts so far by component: the source's name, ``models`` and ``metrics``."""
        return {
            self.source.name: self.source.errors,
            "models": self.prober.errors,
            "metrics": self.scraper.errors,
        }

    def _finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failure = self.failure or exc
            self.failed.set()
            log.error("discovery task %s failed: %s", task.get_name(), exc, exc_info=exc)
