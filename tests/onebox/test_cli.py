"""``python -m onebox run`` and ``demo`` as a user runs them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from tests.onebox.procs import alive, command_line, descendants

pytestmark = pytest.mark.envoy

ONE_MODEL = "name: tiny\nmodels:\n  - {name: gemma, served_name: google/gemma-2b-it}\n"


async def start_run(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``python -m onebox run ARGS`` and return it with its gateway URL once printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "onebox", "run", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    async with asyncio.timeout(60):
        while line := (await process.stdout.readline()).decode():
            if line.startswith("gateway "):
                return process, line.split()[1]
    raise AssertionError(f"no gateway line; stderr: {(await process.stderr.read()).decode()}")


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str]:
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_run_prints_the_gateway_and_sigterm_stops_every_child(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(ONE_MODEL)
    process, url = await start_run("--topology", str(tmp_path / "tiny.yaml"), "--time-scale", "0")
    try:
        children = descendants(process.pid)
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(
                f"{url}/v1/chat/completions",
                json={"model": "google/gemma-2b-it", "messages": [{"role": "user", "content": "hi"}]},
            )
        assert answer.json()["model"] == "google/gemma-2b-it"
        assert len(children) >= 4  # simulator, EPP, BBR, Envoy
    finally:
        process.send_signal(signal.SIGTERM)
        code, _ = await finish(process)
    assert code == 0
    assert not any(alive(pid) for pid in children)


async def test_with_fail_fast_run_reports_a_dying_child_and_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(ONE_MODEL)
    topology = str(tmp_path / "tiny.yaml")
    process, _ = await start_run("--topology", topology, "--time-scale", "0", "--fail-fast")
    children = descendants(process.pid)
    simulators = [pid for pid in children if "vllmsim" in command_line(pid)]
    os.kill(simulators[0], signal.SIGKILL)
    code, err = await finish(process)
    assert code == 1
    assert "gemma-0 exited with code -9" in err
    assert not any(alive(pid) for pid in children)


async def test_run_rejects_a_bad_topology_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("models: [{name: a, served_name: x, replicas: 0}]")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "onebox", "run", "--topology", str(tmp_path / "bad.yaml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    code, err = await finish(process)
    assert code == 2
    assert "replicas" in err
