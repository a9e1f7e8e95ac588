"""Children start in their own process groups, deaths are reported by name, stop leaves nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from onebox.ports import free_port
from onebox.probes import grpc_serving, http_ok
from onebox.supervisor import ChildDied, Supervisor
from tests.onebox.procs import alive, descendants

GEMMA = "google/gemma-2b-it"


def sim_argv(port: int, pod: str) -> list[str]:
    return [sys.executable, "-m", "vllmsim", "--port", str(port), "--model", GEMMA, "--pod-name", pod]


async def test_simulators_become_ready_and_stop_without_leaving_a_process(tmp_path: Path) -> None:
    supervisor = Supervisor(log_dir=tmp_path)
    ports = [free_port(), free_port()]
    try:
        children = [
            await supervisor.start(f"gemma-{i}", sim_argv(p, f"gemma-{i}")) for i, p in enumerate(ports)
        ]
        await asyncio.gather(
            *(
                supervisor.wait_ready(c, http_ok(f"http://127.0.0.1:{p}/health"), within=30)
                for c, p in zip(children, ports, strict=True)
            )
        )
        assert all(alive(c.pid) for c in children)
    finally:
        await supervisor.stop()
    assert not any(alive(c.pid) for c in children)
    assert supervisor.failure is None  # stopping is not dying
    assert "gemma-0" in (tmp_path / "gemma-0.log").read_text()


async def test_a_child_that_exits_before_ready_is_reported_with_its_last_output() -> None:
    supervisor = Supervisor()
    script = (
        "import sys; print('loading config'); print('bad flag --frobnicate', file=sys.stderr); sys.exit(3)"
    )
    try:
        child = await supervisor.start("epp-gemma", [sys.executable, "-c", script])
        with pytest.raises(ChildDied) as died:
            await supervisor.wait_ready(child, http_ok(f"http://127.0.0.1:{free_port()}/health"), within=30)
    finally:
        await supervisor.stop()
    assert died.value.name == "epp-gemma"
    assert died.value.returncode == 3
    assert "bad flag --frobnicate" in str(died.value)
    assert "loading config" in died.value.tail


async def test_a_child_that_dies_while_running_sets_the_failure_once() -> None:
    reports: list[ChildDied] = []
    supervisor = Supervisor(on_death=reports.append)
    port = free_port()
    try:
        child = await supervisor.start("phi3-0", sim_argv(port, "phi3-0"))
        await supervisor.wait_ready(child, http_ok(f"http://127.0.0.1:{port}/health"), within=30)
        os.kill(child.pid, signal.SIGKILL)
        await asyncio.wait_for(supervisor.failed.wait(), 10)
    finally:
        await supervisor.stop()
    assert supervisor.failure is not None
    assert supervisor.failure.name == "phi3-0"
    assert supervisor.failure.returncode == -signal.SIGKILL
    assert reports == [supervisor.failure]


async def test_stopping_also_ends_what_a_child_forked() -> None:
    supervisor = Supervisor()
    child = await supervisor.start("shell", ["sh", "-c", "sleep 300 & sleep 300 & wait"])
    try:
        for _ in range(100):
            forked = descendants(child.pid)
            if len(forked) >= 2:
                break
            await asyncio.sleep(0.02)
        assert len(forked) >= 2
    finally:
        await supervisor.stop(grace=2)
    assert not alive(child.pid)
    assert not any(alive(pid) for pid in forked)


async def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    supervisor = Supervisor()
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
        "time.sleep(300)"
    )
    child = await supervisor.start("stubborn", [sys.executable, "-c", script])
    for _ in range(500):
        if "up" in child.tail:
            break
        await asyncio.sleep(0.02)
    await supervisor.stop(grace=0.5)
    assert not alive(child.pid)
    assert child.process.returncode == -signal.SIGKILL


async def test_a_child_never_ready_is_reported_after_the_deadline() -> None:
    supervisor = Supervisor()
    try:
        child = await supervisor.start("silent", [sys.executable, "-c", "import time; time.sleep(300)"])
        with pytest.raises(ChildDied, match="silent was not ready after 1 s"):
            await supervisor.wait_ready(child, grpc_serving(f"127.0.0.1:{free_port()}"), within=1)
    finally:
        await supervisor.stop()
    assert not alive(child.pid)
