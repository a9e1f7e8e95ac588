"""The runner against live HTTP servers: accuracy comes from what the server answered."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.benchmark import LoadConfig, benchmark, run_workload
from bench.cli import main
from bench.client import chat_url
from bench.report import format_table, write_html, write_json
from bench.stats import summarize
from bench.workloads import WorkloadConfig
from tests.bench.fake_openai import FakeOpenAI, serving
from vllmsim import SimConfig, running

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"
BOTH = [("gemma-0", GEMMA), ("phi-0", PHI)]


def test_any_base_url_form_reaches_chat_completions() -> None:
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"


async def test_a_server_that_answers_with_the_wrong_model_scores_zero_accuracy_despite_success() -> None:
    async with serving(FakeOpenAI([("phi-0", PHI)], answer_any_model=True)) as fake:
        run = await run_workload(
            fake.url, WorkloadConfig(models=[GEMMA], requests=6), LoadConfig(concurrency=3), progress=False
        )
    s = summarize(run).overall
    assert s.success_rate == 1.0
    assert s.accuracy == 0.0
    assert s.misrouted == 6
    assert s.pods == {"phi-0": 6}


async def test_round_robin_over_single_model_pods_misroutes_and_no_retry_hides_it() -> None:
    async with serving(FakeOpenAI(BOTH)) as fake:
        run = await run_workload(
            fake.url, WorkloadConfig(models=[GEMMA], requests=10), LoadConfig(concurrency=1), progress=False
        )
    s = summarize(run).overall
    assert s.accuracy == 0.5
    assert s.success_rate == 0.5
    assert s.attempts_per_request == 1.0
    assert s.statuses == {"200": 5, "404": 5}


async def test_the_old_retry_workaround_reaches_full_accuracy_at_the_cost_of_extra_attempts() -> None:
    async with serving(FakeOpenAI(BOTH)) as fake:
        run = await run_workload(
            fake.url,
            WorkloadConfig(models=[PHI], requests=10),
            LoadConfig(concurrency=1, retries=3),
            progress=False,
        )
    s = summarize(run).overall
    assert s.accuracy == 1.0
    assert s.first_attempt_accuracy == 0.0  # round robin starts on gemma-0 for every odd call
    assert s.attempts_per_request == 2.0
    assert s.retried_requests == 10


async def test_streaming_records_time_to_first_token_inter_token_gaps_and_usage() -> None:
    async with serving(FakeOpenAI([("gemma-0", GEMMA)], tokens=4)) as fake:
        run = await run_workload(
            fake.url,
            WorkloadConfig(models=[GEMMA], requests=4),
            LoadConfig(rate=200.0, stream=True),
            progress=False,
        )
    s = summarize(run).overall
    assert s.accuracy == 1.0
    assert s.ttft.count == 4
    assert s.itl.count == 4 * 3
    assert s.output_tokens == 16
    assert all(r.e2e is not None and r.ttft is not None and r.ttft <= r.e2e for r in run.results)


async def test_a_stream_that_breaks_off_with_an_error_is_a_failure() -> None:
    async with serving(FakeOpenAI([("gemma-0", GEMMA)], break_stream=True)) as fake:
        run = await run_workload(
            fake.url,
            WorkloadConfig(models=[GEMMA], requests=3),
            LoadConfig(concurrency=1, stream=True),
            progress=False,
        )
    s = summarize(run).overall
    assert s.success_rate == 0.0
    assert s.accuracy == 0.0
    assert s.misrouted == 0
    assert s.statuses == {"200+error": 3}
    assert run.results[0].final.error == "engine died"


async def test_an_unreachable_target_is_a_failure_not_a_crash(unused_tcp_port: int) -> None:
    run = await run_workload(
        f"http://127.0.0.1:{unused_tcp_port}",
        WorkloadConfig(models=[GEMMA], requests=2),
        LoadConfig(concurrency=2, timeout=2.0),
        progress=False,
    )
    s = summarize(run).overall
    assert s.success_rate == 0.0
    assert s.statuses == {"no answer": 2}


async def test_a_baseline_replays_the_same_requests_and_is_compared(tmp_path: Path) -> None:
    async with serving(FakeOpenAI([("gemma-0", GEMMA)])) as good, serving(FakeOpenAI(BOTH)) as round_robin:
        report = await benchmark(
            good.url,
            WorkloadConfig(models=[GEMMA], requests=8),
            LoadConfig(concurrency=2),
            baseline=round_robin.url,
            label="gateway",
            baseline_label="round-robin",
            progress=False,
        )
    [comparison] = report.comparisons
    assert comparison.accuracy == 2.0
    assert (comparison.misrouted_target, comparison.misrouted_baseline) == (0, 4)
    gateway, rr = report.runs
    assert [r.index for r in gateway.results] == [r.index for r in rr.results]
    table = format_table(report.summaries())
    assert "round-robin" in table
    assert "50.0%" in table

    data = json.loads(write_json(report, tmp_path / "r.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["gateway", "round-robin"]
    assert data["comparisons"][0]["accuracy"] == 2.0
    assert len(data["requests"]["round-robin"]) == 8
    page = write_html(report, tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") >= 3
    assert "<table>" in page
    assert "gateway vs round-robin" in page


async def test_the_command_line_prints_the_table_and_writes_both_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(FakeOpenAI([("gemma-0", GEMMA)])) as fake:
        argv = [
            "--url",
            fake.url,
            "--models",
            GEMMA,
            "--requests",
            "5",
            "--concurrency",
            "2",
            "--stream",
            "--json",
            str(tmp_path / "out.json"),
            "--html",
            str(tmp_path / "out.html"),
            "--no-progress",
        ]
        code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    assert code == 0
    assert "100.0%" in out
    assert "target: answered by gemma-0 5" in out
    assert (tmp_path / "out.json").exists()
    assert (tmp_path / "out.html").exists()


async def test_the_command_line_sends_openai_api_key_to_the_target_and_the_baseline_and_never_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-bench-0123456789abcdefghijklmnopqrstuv"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    async with (
        serving(FakeOpenAI([("gemma-0", GEMMA)], api_key=key)) as gateway,
        serving(FakeOpenAI([("gemma-0", GEMMA)])) as pods,  # round robin straight to pods: no key needed
    ):
        argv = ["--url", gateway.url, "--baseline", pods.url, "--models", GEMMA, "--requests", "4",
                "--concurrency", "2", "--json", str(tmp_path / "out.json"), "--no-progress"]  # fmt: skip
        code = await asyncio.to_thread(main, argv)
    captured = capsys.readouterr()
    assert code == 0
    assert "target: answered by gemma-0 4" in captured.out
    assert gateway.authorizations == pods.authorizations == [f"Bearer {key}"] * 4
    report = (tmp_path / "out.json").read_text()
    assert json.loads(report)["settings"]["api_key"] == "sent"
    for text in (captured.out, captured.err, report):
        assert key not in text


async def test_an_explicit_api_key_is_sent_and_without_one_a_closed_server_refuses_every_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    key = "sk-bench-0123456789abcdefghijklmnopqrstuv"
    workload, load = WorkloadConfig(models=[GEMMA], requests=3), LoadConfig(concurrency=1, stream=True)
    async with serving(FakeOpenAI([("gemma-0", GEMMA)], api_key=key)) as closed:
        without = await run_workload(closed.url, workload, load, progress=False)
        keyed = await run_workload(closed.url, workload, load, progress=False, api_key=key)
    assert summarize(without).overall.statuses == {"401": 3}
    assert summarize(keyed).overall.statuses == {"200": 3}
    assert closed.authorizations == [None] * 3 + [f"Bearer {key}"] * 3


def test_the_command_line_rejects_bad_settings_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "http://x", "--models", "a,a", "--concurrency", "1"]) == 2
    assert "distinct" in capsys.readouterr().err


async def test_the_runner_measures_a_real_simulator_streaming_and_not() -> None:
    config = SimConfig(models=[GEMMA], pod_name="gemma-0", time_scale=0.05)
    async with running(config) as sim:
        workload = WorkloadConfig(models=[GEMMA], requests=6, max_tokens=8)
        streamed = await run_workload(
            sim.url, workload, LoadConfig(concurrency=3, stream=True), progress=False
        )
        plain = await run_workload(sim.url, workload, LoadConfig(concurrency=3), progress=False)
        wrong = await run_workload(
            sim.url, WorkloadConfig(models=[PHI], requests=2), LoadConfig(concurrency=1), progress=False
        )
    for run in (streamed, plain):
        s = summarize(run).overall
        assert s.accuracy == 1.0
        assert s.pods == {"gemma-0": 6}
        assert s.output_tokens == 6 * 8
    assert summarize(streamed).overall.ttft.count == 6
    assert summarize(streamed).overall.itl.count == 6 * 7
    unknown = summarize(wrong).overall
    assert unknown.statuses == {"404": 2}
    assert unknown.misrouted == 2
