"""Where a topology model's pods come from, and how each kind starts.

- ``sim`` (the default): one ``python -m vllmsim`` per replica, ready on ``GET /health``; with
  ``one_process`` one ``python -m vllmsim --pods N`` for every replica (a large pool on a small box);
- ``vllm``: one real vLLM server per replica from the vLLM environment (:mod:`onebox.realvllm`),
  ready on ``GET /health`` within ``vllm.startup_timeout``; a server that dies or is not ready in
  time is reported with its last log lines;
- ``endpoints``: servers that already run (:mod:`onebox.endpoints`); nothing is started, each must
  answer ``GET /v1/models`` within the box's startup timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from onebox import children, realvllm
from onebox.probes import Probe, http_ok
from onebox.supervisor import Child, Supervisor

if TYPE_CHECKING:
    from onebox.topology import ModelSpec

Backend = Literal["sim", "vllm"]
Kind = Literal["sim", "vllm", "endpoints"]
HOST = "127.0.0.1"


def kind_of(spec: ModelSpec) -> Kind:
    return "endpoints" if spec.endpoints else spec.backend


def check_sources(spec: ModelSpec) -> None:
    """Settings that belong to another kind of pod are an error, not silently ignored."""
    given = spec.model_fields_set
    kind = kind_of(spec)
    if kind == "endpoints":
        for field in ("backend", "replicas", "sim", "vllm", "pods"):
            if field in given:
                raise ValueError(
                    f"model {spec.name}: '{field}' does not apply to bring-your-own endpoints "
                    "(one pod per URL, started by you)"
                )
        if len(set(spec.endpoints)) != len(spec.endpoints):
            raise ValueError(f"model {spec.name}: an endpoint URL is repeated")
        return
    if spec.adapters:
        raise ValueError(
            f"model {spec.name}: 'adapters' names the LoRA adapters of bring-your-own endpoints; "
            "use sim.loras or vllm.loras"
        )
    other = "vllm" if kind == "sim" else "sim"
    if kind != "sim" and "pods" in given:
        raise ValueError(f"model {spec.name}: 'pods' (per-replica simulator options) need backend: sim")
    if other in given:
        raise ValueError(f"model {spec.name}: '{other}' options need backend: {other}")
    if kind != "sim" and spec.one_process:
        raise ValueError(f"model {spec.name}: one_process needs backend: sim")


def lora_parents(spec: ModelSpec) -> dict[str, str]:
    """LoRA adapter -> base served name, for the pods of this model."""
    kind = kind_of(spec)
    if kind == "sim":
        return dict(spec.sim.loras)
    names = spec.vllm.loras if kind == "vllm" else spec.adapters
    return {adapter: spec.served_name for adapter in names}


@dataclass(frozen=True, slots=True)
class Starting:
    """One pod on its way up: its supervised process, or (bring-your-own) its address and probe."""

    name: str
    child: Child | None
    endpoint: tuple[str, int] | None = None  # (host, port) of a bring-your-own server
    probe: Probe | None = None  # bring-your-own only; a child has its spec's probe
    within: float | None = None  # bound on readiness; None: the box's startup timeout
    port_key: str = "http"  # the child's port of this pod (one_process: "http-<i>")


async def start_pods(supervisor: Supervisor, spec: ModelSpec, *, time_scale: float) -> list[Starting]:
    """Start (or, for endpoints, just name) every pod ``spec`` starts with (``initial_replicas``)."""
    if kind_of(spec) == "endpoints":
        return [
            Starting(f"{spec.name}-{i}", None, (url.host, url.port), http_ok(f"{url.url}/v1/models"))
            for i, url in enumerate(spec.endpoints)
        ]
    if spec.one_process:
        starting: list[Starting] = []
        share, extra = divmod(spec.replicas, spec.sim_processes)
        first = 0
        for k in range(spec.sim_processes):
            pods = share + (1 if k < extra else 0)
            name = spec.name if spec.sim_processes == 1 else f"{spec.name}-sims-{k}"
            child = await supervisor.launch(children.simulator_pool(
                name, HOST, _sim_args(spec, 0, time_scale), pods, pod_name=spec.name, first=first
            ))  # fmt: skip
            starting += [
                Starting(f"{spec.name}-{first + i}", child, port_key=f"http-{i}") for i in range(pods)
            ]
            first += pods
        return starting
    return [
        await start_replica(supervisor, spec, i, time_scale=time_scale) for i in range(spec.initial_replicas)
    ]


def _sim_args(spec: ModelSpec, index: int, time_scale: float) -> list[str]:
    # Like the box's real vLLM servers, every simulated pod reports the cached tokens of each answer.
    return ["--model", spec.served_name, "--time-scale", str(time_scale), "--enable-prompt-tokens-details",
            *spec.sim_for(index).flags()]


async def start_replica(
    supervisor: Supervisor, spec: ModelSpec, index: int, *, time_scale: float
) -> Starting:
    """Start replica ``index`` (pod ``<name>-<index>``) of a simulated or real-vLLM model."""
    name = f"{spec.name}-{index}"
    if kind_of(spec) == "vllm":
        python = realvllm.vllm_python()
        tiny = await realvllm.ensure_tiny_model(python) if spec.vllm.needs_tiny_model() else None
        child_spec = realvllm.server_spec(
            name, python, spec.vllm, served_name=spec.served_name, host=HOST, tiny=tiny
        )
        return Starting(name, await supervisor.launch(child_spec), within=spec.vllm.startup_timeout)
    args = _sim_args(spec, index, time_scale)
    return Starting(name, await supervisor.launch(children.simulator(name, HOST, args)))
