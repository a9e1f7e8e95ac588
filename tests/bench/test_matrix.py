"""The workload matrix's plumbing, against fake servers (no one box): rows, ratios, targets, reports."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench import matrix
from bench.workloads import WorkloadConfig
from tests.bench.fake_openai import FakeOpenAI, serving

GEMMA, PHI = "google/gemma-2b-it", "microsoft/Phi-3-mini-4k-instruct"


def test_the_matrix_has_every_row_of_the_issue_with_its_targets_on_a_box_it_defines() -> None:
    rows = {r.name: r for r in matrix.rows()}
    assert list(rows) == [
        "random-mixed", "prefix-fits", "prefix-exceeds", "long-prompt", "bursty", "heterogeneous",
        "prefix-exceeds-2epp",
    ]  # fmt: skip
    assert all(r.box in matrix.BOXES for r in rows.values())
    assert (rows["prefix-exceeds"].min_throughput, rows["prefix-exceeds"].max_ttft_p50) == (3.0, 0.1)
    assert rows["heterogeneous"].min_throughput == 1.3
    assert rows["prefix-exceeds-2epp"].relative_to == ("prefix-exceeds", 0.9)
    assert matrix.BOXES[rows["prefix-exceeds-2epp"].box].epp_replicas == 2
    assert {(r.min_throughput >= 1.0, r.max_ttft_p50 <= 1.05) for r in rows.values()} == {(True, True)}


def test_the_long_prompt_row_sends_bodies_of_about_200_kb() -> None:
    [row] = [r for r in matrix.rows() if r.name == "long-prompt"]
    spec = matrix.generate(row.workload.model_copy(update={"requests": 1}))[0]
    assert 180_000 < len(json.dumps(spec.body(True))) < 230_000


def test_the_heterogeneous_box_has_one_pod_with_half_the_slots_and_twice_the_latency() -> None:
    [model] = matrix.BOXES["hetero"].topology.models
    slow, fast = model.sim_for(0), model.sim_for(1)
    assert slow.max_num_seqs is not None
    assert fast.max_num_seqs is not None
    assert slow.max_num_seqs * 2 == fast.max_num_seqs
    assert slow.itl_ms == 24


def test_quick_rows_send_fewer_requests() -> None:
    full, quick = matrix.rows(), matrix.rows(quick=True)
    assert all(q.workload.requests < f.workload.requests for q, f in zip(quick, full, strict=True))


async def test_a_row_runs_against_both_urls_and_is_judged_against_its_targets(tmp_path: Path) -> None:
    # Two fake "gateways": one answers every request right, the other (round robin) misroutes half.
    blind = FakeOpenAI([("gemma-0", GEMMA), ("phi-0", PHI)])
    workload = WorkloadConfig(models=[GEMMA], requests=12)
    row = matrix.Row("tiny", "two models", "mixed", workload, concurrency=3)
    other = replace(row, name="tiny-relative", relative_to=("tiny", 0.9))
    async with serving(FakeOpenAI([("gemma-0", GEMMA)])) as gateway, serving(blind) as round_robin:
        results = [
            await matrix.run_row(row, gateway.url, round_robin.url),
            await matrix.run_row(other, gateway.url, round_robin.url),
        ]
    matrix.judge(results)
    first = results[0]
    gateway_summary, rr_summary = first.summaries
    assert gateway_summary.overall.accuracy == 1.0
    assert rr_summary.overall.accuracy == 0.5  # every other request reached the phi pod: a 404
    assert [c.what for c in first.checks] == ["throughput", "TTFT p50", "gateway accuracy"]
    assert first.checks[2].passed
    assert results[1].checks[-1].what == "throughput ratio / tiny's"
    table = matrix.format_matrix(results)
    assert table.splitlines()[0].startswith("row")
    assert "tiny-relative" in table
    json_path, html_path = matrix.write_reports(results, {"quick": True}, tmp_path)
    data = json.loads(json_path.read_text())
    assert [r["name"] for r in data["rows"]] == ["tiny", "tiny-relative"]
    assert data["rows"][0]["round_robin"]["overall"]["accuracy"] == 0.5
    assert "data:image/png;base64," in html_path.read_text()


def test_a_check_passes_only_on_its_side_of_the_target() -> None:
    assert matrix.Check("throughput", 1.3, 1.3, at_least=True).passed
    assert not matrix.Check("throughput", 0.99, 1.0, at_least=True).passed
    assert matrix.Check("TTFT p50", 0.09, 0.1, at_least=False).passed
    assert not matrix.Check("TTFT p50", None, 0.1, at_least=False).passed


def test_an_unknown_row_is_refused_naming_the_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert matrix.main(["--rows", "nope"]) == 2
    assert "unknown rows nope; rows: random-mixed," in capsys.readouterr().err
