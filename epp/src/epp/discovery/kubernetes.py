"""Endpoints from Kubernetes: the InferencePool's selected Pods, one endpoint per target port.

``KubernetesDiscovery`` gets and watches the ``inference.networking.k8s.io/v1`` InferencePool,
then lists and watches the Pods matching its ``spec.selector.matchLabels`` in the same namespace.
Every ready, non-terminating Pod with an IP yields one endpoint per ``spec.targetPorts`` entry
(named ``<pod>``, or ``<pod>:<port>`` when the pool has several ports). A Pod that stops being
ready, starts terminating or is deleted is removed at once. A change of the pool's selector or
ports re-syncs the Pods. Watch errors are counted and the list+watch restarts with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, ConfigError
from lightkube.core.client import LabelSelector
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Pod
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from epp.datastore import Datastore, Endpoint
from epp.discovery._workers import ErrorCallback
from epp.validation import problems

log = logging.getLogger(__name__)

InferencePool = create_namespaced_resource(
    group="inference.networking.k8s.io", version="v1", kind="InferencePool", plural="inferencepools"
)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace(service_account_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """``$POD_NAMESPACE``, else the in-cluster service account's namespace, else ``default``."""
    namespace = os.environ.get("POD_NAMESPACE", "").strip()
    if namespace:
        return namespace
    try:
        namespace = service_account_file.read_text().strip()
    except OSError:
        namespace = ""
    return namespace or "default"


class _Selector(BaseModel):
    model_config = ConfigDict(extra="ignore")
    matchLabels: dict[str, str] = Field(min_length=1)


class _Port(BaseModel):
    model_config = ConfigDict(extra="ignore")
    number: int = Field(ge=1, le=65535)


class PoolSpec(BaseModel):
    """The parts of an InferencePool's spec that decide its endpoints."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    selector: _Selector
    targetPorts: list[_Port] = Field(min_length=1)

    @property
    def match_labels(self) -> LabelSelector:
        """The selector as lightkube's ``labels=`` argument."""
        return dict(self.selector.matchLabels)

    @property
    def ports(self) -> list[int]:
        return [port.number for port in self.targetPorts]

    def key(self) -> tuple[tuple[tuple[str, str], ...], tuple[int, ...]]:
        return tuple(sorted(self.selector.matchLabels.items())), tuple(self.ports)


class KubernetesConfigError(ValueError):
    """No usable Kubernetes client configuration (neither in-cluster nor a kubeconfig)."""


def client_from_environment(namespace: str) -> AsyncClient:
    """A lightkube client from the in-cluster service account, else ``$KUBECONFIG`` / ``~/.kube/config``."""
    try:
        return AsyncClient(namespace=namespace)
    except ConfigError as exc:
        raise KubernetesConfigError(
            "no Kubernetes configuration: not in a cluster (no service account token) and no kubeconfig "
            f"(KUBECONFIG or ~/.kube/config): {exc}"
        ) from None


class PoolSpecError(ValueError):
    """An InferencePool whose spec cannot be used; the message names the field."""


def parse_pool_spec(pool: Any, name: str) -> PoolSpec:
    spec = pool.get("spec") if isinstance(pool, dict) else None
    try:
        return PoolSpec.model_validate(spec)
    except ValidationError as exc:
        problem = problems(exc)[0]
        field = problem.path("spec")
        raise PoolSpecError(f"InferencePool {name}: field {field!r}: {problem.message}") from None


def _is_ready(pod: Pod) -> bool:
    status = pod.status
    if status is None or not status.podIP:
        return False
    if pod.metadata is not None and pod.metadata.deletionTimestamp is not None:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or ())


def pod_endpoints(pod: Pod, ports: list[int]) -> list[Endpoint]:
    """The endpoints a Pod contributes: none unless ready, not terminating and with an IP."""
    if pod.metadata is None or not pod.metadata.name or not _is_ready(pod):
        return []
    assert pod.status is not None
    assert pod.status.podIP is not None
    name = pod.metadata.name
    labels = dict(pod.metadata.labels or {})
    return [
        Endpoint(
            name=name if len(ports) == 1 else f"{name}:{port}",
            ip=pod.status.podIP,
            port=port,
            labels=dict(labels),
        )
        for port in ports
    ]


class _Backoff:
    """Delays between retries: doubling from ``first`` up to ``cap`` while failures keep coming,
    back to ``first`` once a failure comes after ``cap`` seconds or more without one."""

    def __init__(self, first: float, cap: float) -> None:
        self._first = first
        self._cap = cap
        self._next = first
        self._last_failure = -math.inf

    async def sleep(self) -> None:
        now = time.monotonic()
        if now - self._last_failure >= self._cap:
            self._next = self._first
        self._last_failure = now
        delay = self._next
        self._next = min(self._next * 2, self._cap)
        await asyncio.sleep(delay)


class KubernetesDiscovery:
    """Feeds the InferencePool's ready Pods into the datastore.

    ``client`` is a lightkube ``AsyncClient``; without one, a client is built from the environment
    (in-cluster service account, else ``$KUBECONFIG``) right away, so a missing configuration fails
    at startup with :class:`KubernetesConfigError`; that client is closed when :meth:`run` ends.
    ``errors`` counts API and watch failures (also reported through ``on_error``).
    """

    name = "kubernetes"

    def __init__(
        self,
        datastore: Datastore,
        namespace: str | None,
        pool_name: str,
        client: AsyncClient | None = None,
        *,
        on_error: ErrorCallback | None = None,
        backoff_first: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        if not pool_name:
            raise ValueError("pool_name must not be empty")
        self._datastore = datastore
        self.namespace = namespace or default_namespace()
        self.pool_name = pool_name
        self._own_client = client is None
        self._client = client if client is not None else client_from_environment(self.namespace)
        self._on_error = on_error
        self._backoff_first = backoff_first
        self._backoff_cap = backoff_cap
        self.errors = 0
        self.spec: PoolSpec | None = None
        self._pods_task: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        # pod name -> addresses it contributes; address -> owning pod (pod IPs get reused).
        self._by_pod: dict[str, set[str]] = {}
        self._owner: dict[str, str] = {}

    async def run(self) -> None:
        """Follow the pool and its Pods until cancelled."""
        try:
            await self._follow_pool(self._client)
        finally:
            await self._stop_pods()
            if self._own_client:
                await self._client.close()

    def _error(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        if self._on_error is not None:
            self._on_error(self.name)
        log.warning("%s: %s", what, str(exc) or type(exc).__name__)

    async def _follow_pool(self, client: AsyncClient) -> None:
        backoff = _Backoff(self._backoff_first, self._backoff_cap)
        where = f"InferencePool {self.namespace}/{self.pool_name}"
        while True:
            try:
                pool = await client.get(InferencePool, self.pool_name, namespace=self.namespace)
                self._set_pool(client, pool)
                version = pool.metadata.resourceVersion if pool.metadata is not None else None
                async for event, changed in client.watch(
                    InferencePool,
                    namespace=self.namespace,
                    fields={"metadata.name": self.pool_name},
                    resource_version=version,
                ):
                    if changed.metadata is None or changed.metadata.name != self.pool_name:
                        continue
                    if event == "DELETED":
                        log.warning("%s was deleted; dropping its endpoints", where)
                        await self._drop_pool()
                    else:
                        self._set_pool(client, changed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._error(f"{where}: get/watch failed", exc)
            await backoff.sleep()

    def _set_pool(self, client: AsyncClient, pool: Any) -> None:
        try:
            spec = parse_pool_spec(pool, f"{self.namespace}/{self.pool_name}")
        except PoolSpecError as exc:
            self._error("ignoring InferencePool update", exc)
            return
        if self.spec is not None and spec.key() == self.spec.key():
            return
        log.info(
            "InferencePool %s/%s selects %s on ports %s",
            self.namespace,
            self.pool_name,
            spec.match_labels,
            spec.ports,
        )
        self.spec = spec
        if self._pods_task is not None:
            # The new loop's first full listing reconciles away what no longer matches.
            retired = self._pods_task
            retired.cancel()
            self._retired.add(retired)
            retired.add_done_callback(self._retired.discard)
        self._pods_task = asyncio.get_running_loop().create_task(
            self._follow_pods(client, spec), name=f"pods:{self.pool_name}"
        )

    async def _drop_pool(self) -> None:
        self.spec = None
        await self._stop_pods()
        self._reconcile([], [])

    async def _stop_pods(self) -> None:
        tasks = [*self._retired, *([self._pods_task] if self._pods_task is not None else [])]
        self._pods_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow_pods(self, client: AsyncClient, spec: PoolSpec) -> None:
        backoff = _Backoff(self._backoff_first, self._backoff_cap)
        where = f"pods of InferencePool {self.namespace}/{self.pool_name}"
        while True:
            try:
                listing = client.list(Pod, namespace=self.namespace, labels=spec.match_labels)
                pods = [pod async for pod in listing]
                self._reconcile(pods, spec.ports)
                self._datastore.mark_synced()
                async for event, pod in client.watch(
                    Pod,
                    namespace=self.namespace,
                    labels=spec.match_labels,
                    resource_version=listing.resourceVersion,
                ):
                    if pod.metadata is None or not pod.metadata.name:
                        continue
                    if event == "DELETED":
                        self._set_pod(pod.metadata.name, [])
                    else:
                        self._set_pod(pod.metadata.name, pod_endpoints(pod, spec.ports))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._error(f"{where}: list/watch failed", exc)
            await backoff.sleep()

    def _reconcile(self, pods: Iterable[Pod], ports: list[int]) -> None:
        """Make the datastore hold exactly the endpoints of ``pods`` (a fresh full listing)."""
        seen: set[str] = set()
        for pod in pods:
            if pod.metadata is None or not pod.metadata.name:
                continue
            seen.add(pod.metadata.name)
            self._set_pod(pod.metadata.name, pod_endpoints(pod, ports))
        for name in [n for n in self._by_pod if n not in seen]:
            self._set_pod(name, [])

    def _set_pod(self, pod_name: str, endpoints: list[Endpoint]) -> None:
        wanted = {endpoint.address: endpoint for endpoint in endpoints}
        previous = self._by_pod.pop(pod_name, set())
        for address in previous - wanted.keys():
            if self._owner.get(address) == pod_name:
                del self._owner[address]
                self._datastore.remove(address)
                log.info("pod %s: endpoint %s removed", pod_name, address)
        for address, endpoint in wanted.items():
            owner = self._owner.get(address)
            current = self._datastore.get(address)
            if owner == pod_name and current is not None:
                if current.name != endpoint.name or current.labels != endpoint.labels:
                    self._datastore.upsert(endpoint)
                continue
            if owner is not None and owner != pod_name:
                # The IP now belongs to another pod: start afresh so its models are re-probed.
                self._by_pod.get(owner, set()).discard(address)
                self._datastore.remove(address)
            self._owner[address] = pod_name
            self._datastore.upsert(endpoint)
            log.info("pod %s: endpoint %s (%s) added", pod_name, address, endpoint.name)
        if wanted:
            self._by_pod[pod_name] = set(wanted)
