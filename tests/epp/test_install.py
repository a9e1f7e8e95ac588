"""The package installed the way epp/Dockerfile installs it (a clean venv, ``pip install epp/``),
then both entrypoints run: they start, report health, and exit cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.slow

EPP_DIR = Path(__file__).resolve().parents[2] / "epp"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the epp distribution (and its dependencies) installed."""
    root = tmp_path_factory.mktemp("epp-venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    build = tmp_path_factory.mktemp("epp-src")
    # Install from a copy so the build leaves nothing (build/, egg-info) in the source tree.
    shutil.copy(EPP_DIR / "pyproject.toml", build)
    skip = shutil.ignore_patterns("*.egg-info", "__pycache__")
    shutil.copytree(EPP_DIR / "src", build / "src", ignore=skip)
    subprocess.run(
        # As the Dockerfile does, except that pip's download cache is kept between test runs.
        [str(root / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(build)],
        check=True,
        timeout=900,
    )
    return root


def _health(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def _start(
    command: list[str], processes: list[subprocess.Popen[str]]
) -> tuple[subprocess.Popen[str], dict[str, int]]:
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    processes.append(process)
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        entry = json.loads(line)
        if entry["message"] == "serving":
            return process, {k: entry[f"{k}_port"] for k in ("grpc", "health", "metrics")}
    raise AssertionError(f"{command[0]} did not start (exit code {process.poll()})")


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=20)


LOCAL = ["--bind", "127.0.0.1", "--grpc-port", "0", "--health-port", "0", "--metrics-port", "0"]


def test_the_installed_bbr_serves_health_and_stops_on_sigterm(
    venv: Path, started: list[subprocess.Popen[str]]
) -> None:
    process, ports = _start([str(venv / "bin" / "bbr"), *LOCAL, "--served-models", "a,b"], started)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert _health(ports["health"], "liveness") == serving
    assert _health(ports["health"], "readiness") == serving
    assert _health(ports["grpc"], "envoy.service.ext_proc.v3.ExternalProcessor") == serving
    assert _stop(process) == 0


def test_the_installed_epp_is_live_but_not_ready_until_it_knows_its_models(
    venv: Path, started: list[subprocess.Popen[str]]
) -> None:
    # Nothing listens on port 9 (discard): the endpoint's models stay unknown, so not ready.
    command = [str(venv / "bin" / "epp"), *LOCAL, "--endpoints", "127.0.0.1:9", "--models-interval", "1"]
    process, ports = _start(command, started)
    assert _health(ports["health"], "liveness") == health_pb2.HealthCheckResponse.SERVING
    assert _health(ports["health"], "readiness") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert _stop(process) == 0


def test_the_installed_epp_refuses_two_endpoint_sources(venv: Path) -> None:
    result = subprocess.run(
        [str(venv / "bin" / "epp"), "--endpoints", "127.0.0.1:9", "--pool-name", "gemma"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "exactly one endpoint source" in result.stderr
