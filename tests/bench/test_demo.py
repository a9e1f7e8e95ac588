"""``make demo`` (``python -m bench.demo``): the one box benchmarked against round robin."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import bench.demo
from bench.demo import DemoSettings, run_demo
from bench.stats import summarize

pytestmark = pytest.mark.envoy


async def test_the_quick_demo_routes_every_request_right_and_round_robin_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys: list[str] = []

    def write_demo_keys(directory: Path, tenant: str) -> tuple[Path, str]:
        path, key = make_keys(directory, tenant)
        keys.append(key)
        return path, key

    make_keys = bench.demo.write_demo_keys
    monkeypatch.setattr(bench.demo, "write_demo_keys", write_demo_keys)
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
    # Prometheus ran beside the box: its plots (per-pod load, TTFT, queue) are in the report.
    assert any(line.startswith("prometheus http://127.0.0.1:") for line in lines)
    assert len(report.plots) == 3
    assert all(plot in html_path.read_text() for plot in report.plots)
    assert any(line.startswith("gateway vs round-robin:") for line in lines)
    # The box is closed with a fresh random key: a request without it is refused, next to the
    # accepted ones; every benchmark request carried it (100% success above), and it is never shown.
    [key] = keys
    assert len(key) >= 32
    assert "  without a key: 401 authentication_error (WWW-Authenticate: Bearer)" in lines
    assert any(line.startswith("  with the key:  200 from pod gemma-0") for line in lines)
    assert all(summaries[label].success_rate == 1.0 for label in ("gateway", "gateway/gemma", "gateway/phi3"))
    for text in [*lines, json_path.read_text(), html_path.read_text()]:
        assert key not in text
