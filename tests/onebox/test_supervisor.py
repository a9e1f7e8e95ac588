"""Children start in their own process groups, deaths are reported by name, stop leaves nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from onebox.children import simulator
from onebox.probes import grpc_serving, http_ok
from onebox.supervisor import Backoff, ChildDied, Supervisor
from tests.onebox.procs import alive, descendants

GEMMA = "google/gemma-2b-it"


@pytest.fixture
def nobody_listens() -> Iterator[int]:
    """A loopback port bound but never listened on: connections to it are refused while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_simulators_become_ready_and_stop_without_leaving_a_process(tmp_path: Path) -> None:
    supervisor = Supervisor(log_dir=tmp_path)
    try:
        children = [await supervisor.launch(simulator(f"gemma-{i}", "127.0.0.1", ["--model", GEMMA]))
                    for i in range(2)]
        ports = await asyncio.gather(*(supervisor.wait_ready(c, within=30) for c in children))
        assert all(alive(c.pid) for c in children)
        assert len({p["http"] for p in ports}) == 2  # each bound port 0 and reported its own port
    finally:
        await supervisor.stop()
    assert not any(alive(c.pid) for c in children)
    assert supervisor.failure is None  # stopping is not dying
    assert "gemma-0" in (tmp_path / "gemma-0.log").read_text()
    # Log files are their owner's alone.
    assert {stat.S_IMODE(os.stat(tmp_path / f"gemma-{i}.log").st_mode) for i in range(2)} == {0o600}


def test_a_log_file_left_world_readable_is_made_private_when_reopened(tmp_path: Path) -> None:
    old = tmp_path / "envoy.log"
    old.write_text("an earlier run\n")
    old.chmod(0o644)
    log = Supervisor(log_dir=tmp_path)._open_log("envoy")
    assert log is not None
    log.close()
    assert stat.S_IMODE(old.stat().st_mode) == 0o600


async def test_a_child_that_exits_before_ready_is_reported_with_its_last_output(nobody_listens: int) -> None:
    supervisor = Supervisor()
    script = (
        "import sys; print('loading config'); print('bad flag --frobnicate', file=sys.stderr); sys.exit(3)"
    )
    try:
        child = await supervisor.start("epp-gemma", [sys.executable, "-c", script])
        refused = http_ok(f"http://127.0.0.1:{nobody_listens}/health")
        with pytest.raises(ChildDied) as died:
            await supervisor.wait_ready(child, refused, within=30)
    finally:
        await supervisor.stop()
    assert died.value.name == "epp-gemma"
    assert died.value.returncode == 3
    assert "bad flag --frobnicate" in str(died.value)
    assert "loading config" in died.value.tail


async def test_a_child_that_dies_while_running_sets_the_failure_once() -> None:
    reports: list[ChildDied] = []
    supervisor = Supervisor(on_death=reports.append)
    try:
        child = await supervisor.launch(simulator("phi3-0", "127.0.0.1", ["--model", GEMMA]))
        await supervisor.wait_ready(child, within=30)
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


async def test_a_child_never_ready_is_reported_after_the_deadline(nobody_listens: int) -> None:
    supervisor = Supervisor()
    try:
        child = await supervisor.start("silent", [sys.executable, "-c", "import time; time.sleep(300)"])
        with pytest.raises(ChildDied, match="silent was not ready after 1 s"):
            await supervisor.wait_ready(child, grpc_serving(f"127.0.0.1:{nobody_listens}"), within=1)
    finally:
        await supervisor.stop()
    assert not alive(child.pid)


async def test_a_supervised_child_that_dies_is_restarted_on_its_port_and_its_death_recorded() -> None:
    supervisor = Supervisor(restart=Backoff(first=0.05))
    try:
        child = await supervisor.launch(simulator("gemma-0", "127.0.0.1", ["--model", GEMMA]))
        ports = await supervisor.wait_ready(child, within=30)
        first = child.pid
        os.kill(first, signal.SIGKILL)
        async with asyncio.timeout(30):
            back = http_ok(f"http://127.0.0.1:{ports['http']}/health")
            while child.restarts == 0 or not await back():  # noqa: ASYNC110 - another process's state
                await asyncio.sleep(0.05)
        assert child.pid != first
        assert child.ports == ports  # the same port: what points at it stays right
    finally:
        await supervisor.stop()
    assert supervisor.failure is None
    assert [(d.name, d.returncode) for d in supervisor.deaths] == [("gemma-0", -signal.SIGKILL)]
    assert not alive(child.pid)


async def test_a_supervised_child_that_dies_before_it_was_ever_ready_is_a_failure_not_a_loop(
    nobody_listens: int,
) -> None:
    supervisor = Supervisor(restart=Backoff(first=0.05))
    try:
        child = await supervisor.start("epp-gemma", [sys.executable, "-c", "import sys; sys.exit(2)"])
        never = http_ok(f"http://127.0.0.1:{nobody_listens}/health")
        with pytest.raises(ChildDied):
            await supervisor.wait_ready(child, never, within=30)
        await asyncio.sleep(0.2)
    finally:
        await supervisor.stop()
    assert child.restarts == 0
    assert supervisor.failure is not None
