"""How to run each kind of one-box child: its command, the ports it reports, its readiness probe.

Every child binds port 0 on its first start and prints the ports it got; a restart asks for the same
ports again, so what points at the child (Envoy's clusters, an EPP's endpoints file) stays right.

- a simulated vLLM pod (``python -m vllmsim``) prints ``vllmsim NAME serving MODELS at URL``;
  ready when ``GET /health`` answers 200; a pool of them in one process (``--pods N``) then prints
  ``vllmsim pods serving at ports P0,P1,...``;
- the EPP and the BBR (``epp``, ``bbr``) log ``{"message": "serving", "grpc_port": ...}``; ready
  when gRPC health ``readiness`` is SERVING. They log at ``info`` at least, for that line.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from epp.contract import join_host_port
from epp.settings import ServerSettings

from onebox.probes import grpc_serving, http_ok
from onebox.supervisor import ChildSpec, Ports, announced

_SIMULATOR_LINE = re.compile(r"^vllmsim \S+ serving \S+ at http://(?P<host>.+):(?P<port>\d+)$")
_POOL_LINE = re.compile(r"^vllmsim pods serving at ports (?P<ports>\d+(?:,\d+)*)$")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def executable(name: str) -> str:
    """A console script of this environment (next to the interpreter), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name!r} not found beside {sys.executable} nor on PATH; run `make venv`")
    return found


def simulator_ports(line: str) -> Ports | None:
    """``{"http": PORT}`` from the simulator's serving line."""
    match = _SIMULATOR_LINE.match(line.strip())
    return {"http": int(match["port"])} if match else None


def ext_proc_ports(line: str) -> Ports | None:
    """``{"grpc", "health", "metrics"}`` from the EPP's or BBR's JSON ``serving`` log line."""
    if '"serving"' not in line:
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("message") != "serving":
        return None
    return {"grpc": int(entry["grpc_port"]), "health": int(entry["health_port"]),
            "metrics": int(entry["metrics_port"])}


def simulator_pool_ports(line: str) -> Ports | None:
    """``{"http-0": PORT, "http-1": ...}`` from the last line of ``vllmsim --pods N``."""
    match = _POOL_LINE.match(line.strip())
    if match is None:
        return None
    return {f"http-{i}": int(port) for i, port in enumerate(match["ports"].split(","))}


def simulator_pool(
    name: str, host: str, args: Sequence[str], pods: int, *, pod_name: str | None = None, first: int = 0
) -> ChildSpec:
    """The child ``name``: ``pods`` simulated pods ``<pod_name>-<first>``.. (``pod_name`` defaults to
    ``name``) in one process (``vllmsim --pods``); a restart asks for the same ports; ready when the
    first pod's ``GET /health`` answers 200 (all start together)."""

    def argv(ports: Ports) -> list[str]:
        where = ["--base-port", "0"]
        if ports:
            where = ["--ports", ",".join(str(ports[f"http-{i}"]) for i in range(pods))]
        return [
            sys.executable, "-m", "vllmsim", "--host", host, "--pods", str(pods), *where,
            "--first-pod", str(first), "--pod-name", pod_name or name, *args,
        ]  # fmt: skip

    return ChildSpec(
        name, argv, ports=announced(simulator_pool_ports),
        probe=lambda ports: http_ok(f"http://{join_host_port(host, ports['http-0'])}/health"),
    )  # fmt: skip


def simulator(name: str, host: str, args: Sequence[str]) -> ChildSpec:
    """A simulated vLLM pod named ``name`` on ``host``; ``args`` are its other flags (model, timings)."""

    def argv(ports: Ports) -> list[str]:
        return [
            sys.executable, "-m", "vllmsim", "--host", host, "--port", str(ports.get("http", 0)),
            "--pod-name", name, *args,
        ]  # fmt: skip

    return ChildSpec(
        name, argv, ports=announced(simulator_ports),
        probe=lambda ports: http_ok(f"http://{join_host_port(host, ports['http'])}/health"),
    )  # fmt: skip


def ext_proc_server(
    name: str, host: str, log_level: str, settings: ServerSettings, env: Mapping[str, str] | None = None
) -> ChildSpec:
    """The ``epp`` or ``bbr`` command of ``settings`` as ``name`` on ``host``: its command line is the
    settings' own (``to_argv``), bound to ``host`` on the ports of this start (0 the first time);
    ``env``: more environment (``PYTHONHASHSEED`` for replicas that share picks)."""
    level = log_level if LOG_LEVELS.index(log_level) <= LOG_LEVELS.index("info") else "info"
    binary = executable(settings.COMMAND)

    def argv(ports: Ports) -> list[str]:
        local = settings.model_validate(
            {
                **settings.model_dump(exclude_unset=True),
                "bind": host,
                "grpc_port": ports.get("grpc", 0),
                "health_port": ports.get("health", 0),
                "metrics_port": ports.get("metrics", 0),
                "log_level": level,
            }
        )
        return [binary, *local.to_argv()]

    return ChildSpec(
        name, argv, ports=announced(ext_proc_ports),
        probe=lambda ports: grpc_serving(join_host_port(host, ports["health"])),
        env={"PYTHONUNBUFFERED": "1", **(env or {})},
    )  # fmt: skip
