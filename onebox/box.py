"""``OneBox``: a topology's whole data plane on 127.0.0.1, as an async context manager.

Every child binds port 0 and reports the port it got (``onebox.children``, ``onebox.envoy``); what
points at a child is written once its ports are known.

Start order (every child is waited for with its own readiness probe):
1. one simulated vLLM server per replica (``python -m vllmsim``; ``GET /health``), and in
   per-model-pools mode, or in either mode with API keys, the BBR with every served model (gRPC
   health ``readiness``), ``bbr_replicas`` of them;
2. once every pod answers: ``epp_replicas`` EPPs per pool (per-model-pools) or over every pod
   (unified-pool), each with a static endpoints file of its pods' reported ports (gRPC health
   ``readiness``); a pool's replicas tell each other their picks (``epp.peers``: a UDP port each,
   chosen before they start, a key file of the run and one ``PYTHONHASHSEED``) unless
   ``share_picks=False``;
3. Envoy with the matching gateway configuration, pointing at the EPPs' and BBRs' reported ports,
   each group of replicas one ext_proc cluster, health-checked on their health ports
   (``onebox.envoy.replicas``; admin ``/ready``), plus, if asked, a second Envoy that round-robins
   over the same pods, as a plain Kubernetes Service would;
4. one request per model through the gateway, which must be answered by that model.

With ``api_keys`` (a key list file, ``onebox.keys``) the gateway is closed: the BBR is the front
door in both modes (in unified-pool it runs before the one EPP) and checks every request's key;
the box's own requests carry a key from the file. Without it the box is open, as a local tool.

Once up, the box is supervised (``fail_fast=False``, the default): a child that dies is logged
with its last lines and restarted on its ports with backoff while the rest keeps serving, as
Kubernetes would restart a container; meanwhile the gateway answers that child's requests with a
JSON 503 (or 502 for a pod). ``fail_fast=True`` instead makes the first death the box's
``failure`` (``wait_for_failure``), for an owner that stops everything then.

Models with ``autoscaling`` start with ``minReplicas`` pods (0: none, and the start-up check skips
them); their pools' EPPs run the flow-control queue (``featureGates: [flowControl]``, with
``noEndpointRequestTTL`` = the model's ``wakeTimeout``), and once up the box runs a scaler
(``onebox.scaler``) that starts and stops their pods and rewrites the EPPs' endpoints files.

Leaving the context (or ``stop()``) stops every child and removes the working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import httpx
import yaml
from epp.contract import ERROR_TYPES, join_host_port
from epp.routing import ROUTING_MODES, RoutingMode, split_into_pools
from epp.routing import Pool as RoutingPool
from epp.scheduling.config import EndpointPickerConfig
from epp.settings import BbrSettings, EppSettings, ServerSettings
from pydantic import ValidationError

from onebox import backends, children
from onebox.envoy import bootstrap
from onebox.envoy.limits import GatewayLimits, GatewayTimeouts
from onebox.envoy.phases import with_phase_log
from onebox.envoy.process import admin_socket, envoy_child, envoy_log_level
from onebox.envoy.replicas import Replica
from onebox.keys import BoxKeys, load_keys
from onebox.probes import until_ready
from onebox.scaler import Scaler, epp_config_document, with_flow_control
from onebox.supervisor import Backoff, Child, ChildDied, ChildSpec, Supervisor, free_port
from onebox.topology import ModelSpec, Topology

if TYPE_CHECKING:
    from onebox.prometheus import BoxPrometheus

Mode = RoutingMode
MODES: tuple[str, ...] = ROUTING_MODES
HOST = "127.0.0.1"
MAX_REPLICAS = 8  # EPP or BBR replicas per group: each is a Python process on a small machine
# Beyond a wake timeout, the EPP's answer to Envoy may take this long (its 503 on the way back).
_WAKE_MARGIN = 5.0
# After a pod leaves the endpoints file, the EPP re-reads it within its poll interval (0.5 s).
_DRAIN_SECONDS = 1.0
# How often an Envoy with a phase log flushes it (a benchmark reads it between its runs).
_PHASE_FLUSH_MS = 100

_log = logging.getLogger("onebox.box")


class GatewayNotServing(RuntimeError):
    """Every process is up, but a model is not answered correctly through the gateway."""


@dataclass(frozen=True, slots=True)
class Pod:
    """One model server replica: simulated, real vLLM, or bring-your-own (``onebox.backends``).

    ``pid`` is its current process (a restart changes it); None for a bring-your-own server.
    """

    name: str
    model: str  # served model name
    pool: str
    child: Child | None
    endpoint: tuple[str, int] | None = None  # (host, port) of a bring-your-own server
    port_key: str = "http"  # which of the child's ports (a one-process pool's pods share a child)

    @property
    def host(self) -> str:
        return self.endpoint[0] if self.endpoint else HOST

    @property
    def port(self) -> int:
        if self.endpoint:
            return self.endpoint[1]
        assert self.child is not None
        return self.child.ports[self.port_key]

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@dataclass(frozen=True, slots=True)
class ExtProcServer:
    """A running EPP or BBR: its ext_proc gRPC port plus health and metrics ports."""

    name: str
    child: Child

    @property
    def grpc_port(self) -> int:
        return self.child.ports["grpc"]

    @property
    def health_port(self) -> int:
        return self.child.ports["health"]

    @property
    def metrics_port(self) -> int:
        return self.child.ports["metrics"]

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def grpc_address(self) -> str:
        return join_host_port(HOST, self.grpc_port)

    @property
    def replica(self) -> Replica:
        """How Envoy reaches it: the ext_proc address, checked on the health port."""
        return Replica(address=self.grpc_address, health_port=self.health_port)


@dataclass(frozen=True)
class _Peers:
    """A pool's replicas that share picks: the key file, each replica's UDP port, their environment."""

    key: Path
    ports: list[int]
    env: dict[str, str]

    def fields(self, index: int) -> dict[str, object]:
        """Replica ``index``'s peer settings: its peer port, the others' and the key."""
        others = [join_host_port(HOST, port) for i, port in enumerate(self.ports) if i != index]
        return {"peer_port": self.ports[index], "peers": ",".join(others), "peer_key_file": self.key}


def replica_name(base: str, index: int, replicas: int) -> str:
    """``epp-gemma`` alone; ``epp-gemma-0``, ``epp-gemma-1``, ... when there are several."""
    return base if replicas == 1 else f"{base}-{index}"


class OneBox:
    """Start with ``async with OneBox(topology) as box:``; then ``box.gateway_url``, ``box.pods``."""

    def __init__(
        self,
        topology: Topology,
        *,
        mode: Mode = "per-model-pools",
        port: int | None = None,
        time_scale: float = 1.0,
        round_robin: bool = False,
        epp_profile: str | None = None,
        epp_replicas: int = 1,
        bbr_replicas: int = 1,
        log_dir: Path | None = None,
        startup_timeout: float = 60.0,
        log_level: str = "warning",
        fail_fast: bool = False,
        restart: Backoff | None = None,
        limits: GatewayLimits | None = None,
        timeouts: GatewayTimeouts | None = None,
        api_keys: Path | None = None,
        bbr_buffered_bytes: int | None = None,
        monitoring: BoxPrometheus | None = None,
        epp_config: Path | None = None,
        epp_settings: dict[str, Any] | None = None,
        phase_log_dir: Path | None = None,
        response_mode: bootstrap.ResponseMode = "streamed",
        share_picks: bool = True,
    ) -> None:
        """``bbr_buffered_bytes``: the request body bytes each BBR replica may hold at once (its
        default: half its memory limit, or 1 GiB). ``epp_config``: an EndpointPickerConfig file for
        every EPP (instead of ``epp_profile``). ``epp_settings``: more EPP settings (``EppSettings``
        fields, e.g. ``{"cached_tokens_feedback_rate": 1.0}``) for every EPP. ``phase_log_dir``: each
        Envoy (``envoy``, ``envoy-round-robin``) also writes every request's phases to
        ``<name>.phases.jsonl`` there (``onebox.envoy.phases``), flushed every 100 ms.
        ``response_mode``: how the gateway's Envoy shows the EPPs the answers: ``streamed`` (their
        headers, then the body only where an EPP reads it) or ``full-duplex`` (every chunk, as GKE's
        gateway sends them). ``share_picks``: a pool's EPP replicas tell each other their picks (as on
        GKE); False: each learns from its own alone."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        if log_level not in children.LOG_LEVELS:
            raise ValueError(f"unknown log level {log_level!r}; levels: {', '.join(children.LOG_LEVELS)}")
        if time_scale < 0:
            raise ValueError(f"time_scale must be >= 0, got {time_scale}")
        if response_mode not in get_args(bootstrap.ResponseMode):
            raise ValueError(f"unknown response mode {response_mode!r}; modes: "
                             f"{', '.join(get_args(bootstrap.ResponseMode))}")
        for what, count in (("epp_replicas", epp_replicas), ("bbr_replicas", bbr_replicas)):
            if not 1 <= count <= MAX_REPLICAS:
                raise ValueError(f"{what} must be within 1..{MAX_REPLICAS}, got {count}")
        if epp_config is not None and epp_profile is not None:
            raise ValueError("give epp_config or epp_profile, not both")
        autoscaled = [m for m in topology.models if m.autoscaling is not None]
        if autoscaled and round_robin:
            raise ValueError("round_robin needs fixed pods; the topology has autoscaled models")
        timeouts = _timeouts_for(autoscaled, timeouts, _queue_holds(autoscaled, epp_profile, epp_config))
        self.topology = topology
        self.epp_config = epp_config
        self.epp_settings = dict(epp_settings or {})
        # Checked now: a bad entry is the caller's error (KeysFileError, a ValueError), before any start.
        self.keys: BoxKeys | None = None
        if api_keys is not None:
            known = set(topology.served_names).union(*(m.lora_parents for m in topology.models))
            self.keys = load_keys(api_keys, known)
        self.mode: Mode = mode
        # The InferencePools of the mode, each with one EPP (or epp_replicas): per-model pools by
        # each model's pool, or one "unified" pool over every pod.
        self.pools = split_into_pools(mode, topology.models, pool_of=lambda m: m.pool_name, unified="unified")
        self.time_scale = time_scale
        self.with_round_robin = round_robin
        self.epp_profile = epp_profile
        self.epp_replicas = epp_replicas
        self.share_picks = share_picks
        self.bbr_replicas = bbr_replicas
        self.bbr_buffered_bytes = bbr_buffered_bytes
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.limits = limits or GatewayLimits()
        self.timeouts = timeouts
        self.supervisor = Supervisor(log_dir=log_dir, restart=None if fail_fast else (restart or Backoff()))
        self.pods: list[Pod] = []
        self.epps: dict[str, list[ExtProcServer]] = {}  # pool name (or "unified") -> its EPP replicas
        self.bbrs: list[ExtProcServer] = []
        self.gateway_port = port or 0  # 0 until Envoy reports the port it bound
        self.round_robin_port: int | None = None
        self.scaler: Scaler | None = None
        self._workdir: Path | None = None
        # A Prometheus scraping every child, started last (``onebox.prometheus``).
        self.monitoring = monitoring
        self.phase_log_dir = phase_log_dir
        self.response_mode: bootstrap.ResponseMode = response_mode
        self._scaling = asyncio.Lock()

    # -- public surface -------------------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.gateway_port}"

    def phase_log(self, envoy: str = "envoy") -> Path:
        """Where the Envoy ``envoy`` writes each request's phases (with ``phase_log_dir``)."""
        if self.phase_log_dir is None:
            raise RuntimeError("this box was started without phase_log_dir")
        return self.phase_log_dir / f"{envoy}.phases.jsonl"

    @property
    def round_robin_url(self) -> str:
        if self.round_robin_port is None:
            raise RuntimeError("this box was started without round_robin=True")
        return f"http://{HOST}:{self.round_robin_port}"

    @property
    def front_door(self) -> bool:
        """Whether the BBR runs in front of the EPPs: always in per-model pools, with keys in both modes."""
        return self.mode == "per-model-pools" or self.keys is not None

    @property
    def children(self) -> list[Child]:
        return list(self.supervisor.children)

    @property
    def failure(self) -> ChildDied | None:
        return self.supervisor.failure

    def child(self, name: str) -> Child:
        """The child called ``name`` (``gemma-0``, ``bbr``, ``epp-gemma``, ``envoy``, ...)."""
        for child in self.supervisor.children:
            if child.name == name:
                return child
        raise KeyError(f"no child {name!r}; children: {', '.join(c.name for c in self.supervisor.children)}")

    def admin_socket(self, name: str = "envoy") -> Path:
        """The Unix socket (mode 0600, in the box's private folder) of the Envoy ``name``'s admin."""
        if self._workdir is None:
            raise RuntimeError("the box is not running")
        return admin_socket(self._workdir, name)

    async def wait_for_failure(self) -> ChildDied:
        """Block until a child dies (fail-fast) or dies before it was ever ready; return what happened."""
        await self.supervisor.failed.wait()
        assert self.supervisor.failure is not None
        return self.supervisor.failure

    async def __aenter__(self) -> OneBox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.supervisor.children:
            raise RuntimeError("a OneBox starts once; make a new one")
        self._workdir = Path(tempfile.mkdtemp(prefix="onebox-"))
        try:
            # The BBR needs nothing else, so it starts alongside the simulators; the EPPs start
            # once every pod answers (their endpoints files need the pods' ports, and their first
            # probe then finds every pod); Envoy's clusters need the EPPs' ports, so it starts last.
            pods = await self._spawn_pods()
            bbr = await self._spawn_bbrs() if self.front_door else []
            await asyncio.gather(self._wait_pods(pods), self._wait_ready(bbr))
            await self._wait_ready(await self._spawn_epps())
            await self._start_gateways()
            if self.monitoring is not None:
                await self.monitoring.start(self, self._workdir)
            await self._check_every_model_is_served()
            if any(m.autoscaling is not None for m in self.topology.models):
                self.scaler = Scaler(self, self.topology.models)
                self.scaler.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.scaler is not None:
            await self.scaler.stop()
        await self.supervisor.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -- steps ----------------------------------------------------------------------------
    async def _wait_ready(self, starting: list[Child]) -> None:
        await asyncio.gather(
            *(self.supervisor.wait_ready(child, within=self.startup_timeout) for child in starting)
        )

    async def _launch(self, spec: ChildSpec) -> Child:
        return await self.supervisor.launch(spec)

    async def _spawn_pods(self) -> list[backends.Starting]:
        starting = []
        for spec in self.topology.models:
            for pod in await backends.start_pods(self.supervisor, spec, time_scale=self.time_scale):
                self.pods.append(
                    Pod(pod.name, spec.served_name, spec.pool_name, pod.child, pod.endpoint, pod.port_key)
                )
                starting.append(pod)
        return starting

    async def _wait_pods(self, starting: list[backends.Starting]) -> None:
        async def wait(pod: backends.Starting) -> None:
            within = max(self.startup_timeout, pod.within or 0.0)
            if pod.child is not None:
                await self.supervisor.wait_ready(pod.child, within=within)
                return
            assert pod.probe is not None
            assert pod.endpoint is not None
            try:
                await until_ready(pod.probe, within)
            except TimeoutError:
                address = join_host_port(*pod.endpoint)
                raise GatewayNotServing(
                    f"{pod.name}: {address} did not answer GET /v1/models within {within:.0f} s"
                ) from None

        # The pods of a one-process pool share their child: wait for it once.
        once = {id(pod.child) if pod.child is not None else id(pod): pod for pod in starting}
        await asyncio.gather(*(wait(pod) for pod in once.values()))

    def _ext_proc(self, name: str, settings: ServerSettings, env: dict[str, str] | None = None) -> ChildSpec:
        return children.ext_proc_server(name, HOST, self.log_level, settings, env)

    async def _spawn_bbrs(self) -> list[Child]:
        adapters = {a: base for model in self.topology.models for a, base in model.lora_parents.items()}
        keys: dict[str, object] = {}
        if self.keys is not None:
            # Each replica enforces ceil(requestsPerMinute / N) of a key's limit (epp.auth.limits).
            keys = {"api_keys_file": self.keys.path, "limit_share": self.bbr_replicas}
        if self.bbr_buffered_bytes is not None:
            keys["max_buffered_bytes"] = self.bbr_buffered_bytes
        settings = BbrSettings.model_validate(
            {"served_models": self.topology.served_names, "adapters": adapters, **keys}
        )
        for i in range(self.bbr_replicas):
            name = replica_name("bbr", i, self.bbr_replicas)
            self.bbrs.append(ExtProcServer(name, await self._launch(self._ext_proc(name, settings))))
        return [b.child for b in self.bbrs]

    def _endpoints_file(self, name: str, pods: list[Pod]) -> Path:
        assert self._workdir is not None
        path = self._workdir / f"{name}-endpoints.yaml"
        endpoints = [
            {"name": p.name, "address": p.host, "port": p.port, "labels": {"pool": p.pool}} for p in pods
        ]
        # Replaced whole: the EPP re-reads it while pods come and go (autoscaling).
        partial = path.with_suffix(".partial")
        partial.write_text(yaml.safe_dump({"endpoints": endpoints}, sort_keys=False))
        os.replace(partial, path)
        return path

    def _pods_of(self, pool: RoutingPool[ModelSpec]) -> list[Pod]:
        return [p for p in self.pods if not pool.by_model or p.pool == pool.name]

    async def _spawn_epps(self) -> list[Child]:
        starting = []
        for pool in self.pools:
            pods = self._pods_of(pool)
            endpoints = self._endpoints_file(pool.name, pods)
            # The pool's models from the topology, not from its pods: a model at zero pods stays
            # listed and is answered 503 (or waits in the queue), never 404.
            served = {m.served_name for m in pool.models}
            fields = {
                "endpoints_file": endpoints,
                "pool_models": sorted(served | {p.model for p in pods}),
                **self._epp_config(pool),
                "replicas": self.epp_replicas,
                **self.epp_settings,
            }
            base = f"epp-{pool.name}" if pool.by_model else "epp"
            peers = self._peers(pool.name)
            for i in range(self.epp_replicas):
                name = replica_name(base, i, self.epp_replicas)
                if peers is None:
                    spec = self._ext_proc(name, EppSettings.model_validate(fields))
                else:
                    settings = EppSettings.model_validate({**fields, **peers.fields(i)})
                    spec = self._ext_proc(name, settings, env=peers.env)
                child = await self._launch(spec)
                self.epps.setdefault(pool.name, []).append(ExtProcServer(name, child))
                starting.append(child)
        return starting

    def _peers(self, pool: str) -> _Peers | None:
        """How the pool's EPP replicas reach each other (None: one replica, or not sharing)."""
        if self.epp_replicas < 2 or not self.share_picks:
            return None
        assert self._workdir is not None
        key = self._workdir / f"{pool}-peer.key"
        key.touch(mode=0o600)
        key.write_text(secrets.token_hex(32))
        ports = [free_port(HOST, socket.SOCK_DGRAM) for _ in range(self.epp_replicas)]
        return _Peers(key, ports, {"PYTHONHASHSEED": str(secrets.randbelow(2**32 - 1) + 1)})

    def _epp_config(self, pool: RoutingPool[ModelSpec]) -> dict[str, object]:
        """The EPP's config setting: the profile or config file given, or for a pool with autoscaled
        models a config of the workdir with the flow-control queue on, so that a request for a model
        at zero pods waits (up to the longest ``wakeTimeout`` of those with ``minReplicas: 0``) while
        its first pod starts."""
        scaled = [m.autoscaling for m in pool.models if m.autoscaling is not None]
        if not scaled:
            if self.epp_config is not None:
                return {"config_file": self.epp_config}
            return {"profile": self.epp_profile} if self.epp_profile else {}
        wakes = [a.wake_timeout for a in scaled if a.min_replicas == 0]
        document = with_flow_control(
            epp_config_document(self.epp_profile, self.epp_config),
            no_endpoint_ttl=max(wakes) if wakes else None,
        )
        assert self._workdir is not None
        path = self._workdir / f"{pool.name}-epp-config.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return {"config_file": path}

    # -- autoscaling (onebox.scaler) -------------------------------------------------------
    def replicas(self, model: ModelSpec) -> int:
        return sum(1 for p in self.pods if p.model == model.served_name)

    def pod_names(self, model: ModelSpec) -> set[str]:
        return {p.name for p in self.pods if p.model == model.served_name}

    def metrics_urls(self, model: ModelSpec) -> list[str]:
        pool = model.pool_name if self.pools[0].by_model else self.pools[0].name
        return [f"http://{join_host_port(HOST, e.metrics_port)}/metrics" for e in self.epps[pool]]

    async def scale(self, model: ModelSpec, replicas: int) -> None:
        """Start or stop pods of ``model`` until it has ``replicas``; the EPPs learn of each pod
        through their endpoints file once it is ready (new) or before it stops (leaving)."""
        async with self._scaling:
            mine = sorted((p for p in self.pods if p.model == model.served_name), key=lambda p: p.name)
            if replicas > len(mine):
                used = {p.name for p in mine}
                free = (i for i in range(model.most_replicas) if f"{model.name}-{i}" not in used)
                starting = [
                    await backends.start_replica(self.supervisor, model, i, time_scale=self.time_scale)
                    for _, i in zip(range(replicas - len(mine)), free, strict=False)
                ]
                await self._wait_pods(starting)
                self.pods += [Pod(s.name, model.served_name, model.pool_name, s.child) for s in starting]
                self._write_endpoints()
            elif replicas < len(mine):
                leaving = mine[replicas:]
                self.pods = [p for p in self.pods if p not in leaving]
                self._write_endpoints()
                await asyncio.sleep(_DRAIN_SECONDS)
                await asyncio.gather(*(self.supervisor.retire(p.child) for p in leaving if p.child))

    async def restart_pod(self, name: str, within: float = 60.0) -> None:
        """Kill pod ``name``'s server (as a crash would) and wait until the box's supervisor has
        started it again, on the same port, and it answers ``/health``: it comes back with an empty
        KV cache, and the EPPs, which never saw it leave, still believe it holds what it held."""
        pod = next((p for p in self.pods if p.name == name), None)
        if pod is None or pod.child is None or self.supervisor.restart is None:
            raise ValueError(f"no pod {name!r} that this box supervises and restarts")
        child, restarts = pod.child, pod.child.restarts
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if child.restarts > restarts and child.running:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{pod.url}/health")).status_code == 200:
                            return
                if time.monotonic() > deadline:
                    raise ChildDied(name, None, child.tail, reason=f"was not back after {within:.0f} s")
                await asyncio.sleep(0.05)

    def _write_endpoints(self) -> None:
        for pool in self.pools:
            self._endpoints_file(pool.name, self._pods_of(pool))

    async def _start_gateways(self) -> None:
        assert self._workdir is not None
        level = envoy_log_level(self.log_level, keys=self.keys is not None)
        if level != self.log_level:
            _log.warning("Envoy runs at log level %s, not %s: its debug log prints every request's "
                         "headers, API keys included, and this box checks API keys", level, self.log_level)
        configs = [("envoy", self._gateway_config())]
        if self.with_round_robin:
            by_model: dict[str, list[str]] = {}
            for pod in self.pods:
                by_model.setdefault(pod.model, []).append(pod.address)
            configs.append(("envoy-round-robin", bootstrap.round_robin_config(
                [p.address for p in self.pods], host=HOST, limits=self.limits, timeouts=self.timeouts,
                by_model=by_model,
            )))  # fmt: skip
        specs = []
        if self.phase_log_dir is not None:
            self.phase_log_dir.mkdir(parents=True, exist_ok=True)
        for name, config in configs:
            flush = None
            if self.phase_log_dir is not None:
                config, flush = with_phase_log(config, self.phase_log(name)), _PHASE_FLUSH_MS
            specs.append(envoy_child(name, config, self._workdir, log_level=level, file_flush_ms=flush))
        gateways = [await self._launch(spec) for spec in specs]
        await self._wait_ready(gateways)
        self.gateway_port = gateways[0].ports["listener"]
        if self.with_round_robin:
            self.round_robin_port = gateways[1].ports["listener"]

    def _gateway_config(self) -> dict[str, Any]:
        if not self.pools[0].by_model:
            [pool] = self.pools
            return bootstrap.unified_gateway_config(
                epp=[e.replica for e in self.epps[pool.name]], bbr=[b.replica for b in self.bbrs] or None,
                host=HOST, port=self.gateway_port,
                endpoints=[p.address for p in self.pods], limits=self.limits, timeouts=self.timeouts,
                response_mode=self.response_mode,
            )  # fmt: skip
        pools = [
            bootstrap.PoolRoute(
                name=pool.name,
                models=tuple(m.served_name for m in pool.models),
                epp=tuple(e.replica for e in self.epps[pool.name]),
                endpoints=tuple(p.address for p in self._pods_of(pool)),
            )
            for pool in self.pools
        ]
        return bootstrap.gateway_config(
            bbr=[b.replica for b in self.bbrs], pools=pools, host=HOST, port=self.gateway_port,
            limits=self.limits, timeouts=self.timeouts, response_mode=self.response_mode,
        )  # fmt: skip

    async def _check_every_model_is_served(self) -> None:
        """One tiny request per model through the gateway; retried until the startup deadline.

        With keys, each request carries a key of the file that may use its model; a model only
        ``sha256:`` entries may use cannot be asked (the box knows no key for it): the gateway must
        then refuse a request without a key (401) instead, and the log says the model was not asked.
        """
        deadline = time.monotonic() + self.startup_timeout
        async with httpx.AsyncClient(base_url=self.gateway_url, timeout=10.0) as client:
            for spec in self.topology.models:
                model = spec.served_name
                if spec.initial_replicas == 0 and not spec.endpoints:
                    _log.info("%s starts at zero pods: its first request wakes it", model)
                    continue
                body = {"model": model, "messages": [{"role": "user", "content": "ready?"}], "max_tokens": 1}
                headers, expected = self._check_request(model)
                while True:
                    if self.supervisor.failure is not None:
                        raise self.supervisor.failure
                    answered: tuple[int, str | None]
                    try:
                        response = await client.post("/v1/chat/completions", json=body, headers=headers)
                        answered = response.status_code, _answered_by(response)
                    except (httpx.HTTPError, ValueError) as exc:
                        answered = (0, f"{type(exc).__name__}: {exc}")
                    if answered == expected:
                        break
                    if self.keys is not None and answered == (429, ERROR_TYPES[429]):
                        # The key is known and allowed this model (the limit is checked last).
                        _log.warning(
                            "%s: the box's check request was over its key's requestsPerMinute (429); "
                            "the front door accepted the key, the model was not asked", model,
                        )  # fmt: skip
                        break
                    if time.monotonic() > deadline:
                        raise GatewayNotServing(
                            f"{model} is not served through {self.gateway_url}: last answer {answered}"
                        )
                    await asyncio.sleep(0.1)

    def _check_request(self, model: str) -> tuple[dict[str, str], tuple[int, str | None]]:
        """The headers of the check request for ``model`` and the answer it expects (status, model
        or error type): 200 from that model; with keys, sent with a key that may use it, or, with no
        such ``key:`` entry, sent without a key and expecting the front door's 401."""
        if self.keys is None:
            return {}, (200, model)
        key = self.keys.probe_key(model)
        if key is not None:
            return {"authorization": f"Bearer {key.get_secret_value()}"}, (200, model)
        _log.warning(
            "%s: no 'key:' entry of %s may use this model (a 'sha256:' entry holds no key), so the box "
            "cannot ask it through the gateway; checking only that the gateway refuses a request "
            "without a key (its pods were checked directly)",
            model, self.keys.path,
        )  # fmt: skip
        return {}, (401, ERROR_TYPES[401])


def _queue_holds(
    autoscaled: list[ModelSpec], profile: str | None, config_file: Path | None
) -> tuple[float, str] | None:
    """The longest time an EPP's flow-control queue may hold a request (its larger TTL), and the
    field that sets it; None when no EPP of the box queues (no ``flowControl`` gate, nothing autoscaled)."""
    try:
        document = epp_config_document(profile, config_file)
    except (OSError, ValueError, yaml.YAMLError):
        return None  # the EPP says what is wrong with it when it starts
    if autoscaled:  # the box turns the queue on for them (see OneBox._epp_config)
        wakes = [m.autoscaling.wake_timeout for m in autoscaled
                 if m.autoscaling is not None and m.autoscaling.min_replicas == 0]  # fmt: skip
        document = with_flow_control(document, no_endpoint_ttl=max(wakes) if wakes else None)
    try:
        flow = EndpointPickerConfig.model_validate(document).flow_control_config()
    except ValidationError:
        return None  # the EPP says what is wrong with it when it starts
    if flow is None:
        return None
    return max((flow.default_request_ttl, "flowControl.defaultRequestTTL"),
               (flow.no_endpoint_request_ttl, "flowControl.noEndpointRequestTTL"))  # fmt: skip


def _timeouts_for(
    autoscaled: list[ModelSpec], timeouts: GatewayTimeouts | None, holds: tuple[float, str] | None = None
) -> GatewayTimeouts:
    """The gateway's timeouts around the EPP's queue, which may hold a request (before Envoy sends it
    on, with nothing passing either way) up to ``holds`` (its longest TTL, and the field that sets it):

    - Envoy's stream idle timeout cuts such a request (a 504) when it is shorter: it is raised past
      the longest hold (it is the backstop behind the narrower timeouts; a value given is raised too,
      with a warning). A queue without a time limit ("0s") is an error: Envoy's would be the limit.
    - Envoy's ext_proc message timeout must be longer than the longest ``wakeTimeout``: raised from
      the default, an error if set shorter.
    """
    timeouts = timeouts or GatewayTimeouts()
    if holds is not None:
        hold, field = holds
        if math.isinf(hold):
            raise ValueError(
                f"the EPP's {field} is 0s (no limit): the gateway's stream idle timeout "
                f"({timeouts.stream_idle:g} s) would end a request it holds longer; give the queue a limit"
            )
        if timeouts.stream_idle < hold + _WAKE_MARGIN:
            if "stream_idle" in timeouts.model_fields_set:
                _log.warning(
                    "stream idle timeout %g s raised to %g s: the EPP's %s (%g s) holds requests that long",
                    timeouts.stream_idle, hold + _WAKE_MARGIN, field, hold,
                )  # fmt: skip
            timeouts = timeouts.model_copy(update={"stream_idle": hold + _WAKE_MARGIN})
    wakes = [
        (m.autoscaling.wake_timeout, m.name)
        for m in autoscaled
        if m.autoscaling is not None and m.autoscaling.min_replicas == 0
    ]
    if not wakes:
        return timeouts
    wake, name = max(wakes)
    if "ext_proc_message" not in timeouts.model_fields_set:  # the default: raised to fit
        longer = max(timeouts.ext_proc_message, wake + _WAKE_MARGIN)
        return timeouts.model_copy(update={"ext_proc_message": longer})
    if timeouts.ext_proc_message < wake + _WAKE_MARGIN:
        raise ValueError(
            f"model {name}: autoscaling.wakeTimeout ({wake:g} s) must be at least {_WAKE_MARGIN:g} s shorter "
            f"than the gateway's ext_proc message timeout ({timeouts.ext_proc_message:g} s): a request "
            "waiting for the model to wake would get Envoy's 503 first"
        )
    return timeouts


def _answered_by(response: httpx.Response) -> str | None:
    """The answer's model, or for an error its type (``authentication_error``, ...)."""
    document = response.json()
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if response.status_code != 200 and isinstance(error, dict):
        return str(error.get("type"))
    model = document.get("model")
    return None if model is None else str(model)
