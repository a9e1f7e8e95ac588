"""``python -m onebox run`` and ``demo`` as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from bench.stats import summarize
from onebox.demo import DemoSettings, run_demo
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


async def test_run_reports_a_dying_child_and_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(ONE_MODEL)
    process, _ = await start_run("--topology", str(tmp_path / "tiny.yaml"), "--time-scale", "0")
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


async def test_the_quick_demo_routes_every_request_right_and_round_robin_does_not(tmp_path: Path) -> None:
    lines: list[str] = []
    settings = replace(DemoSettings.quick(), time_scale=0)
    report, json_path, html_path = await run_demo(settings, tmp_path, progress=False, out=lines.append)
    summaries = {s.label: s.overall for s in (summarize(run) for run in report.runs)}
    assert list(summaries) == [
        "gateway",
        "gateway/gemma",
        "gateway/phi3",
        "round-robin",
        "round-robin+retries",
    ]
    for label in ("gateway", "gateway/gemma", "gateway/phi3"):
        assert summaries[label].accuracy == 1.0
        assert summaries[label].attempts_per_request == 1.0
    # Two pods each serving one model: a model-blind round robin must misroute mixed traffic.
    assert summaries["round-robin"].accuracy < 1.0
    assert summaries["round-robin+retries"].attempts_per_request > 1.0
    assert json.loads(json_path.read_text())["comparisons"][0]["misrouted_target"] == 0
    assert "data:image/png;base64," in html_path.read_text()
    assert any(line.startswith("gateway vs round-robin:") for line in lines)
