"""The workload matrix's plumbing, against fake servers (no one box): rows, ratios, targets, reports."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench import matrix
from bench.client import Attempt, RequestResult, RunResult, run
from bench.stats import summarize
from bench.workloads import Workload, WorkloadConfig, generate
from tests.bench.fake_openai import FakeOpenAI, serving
from vllmsim import SimConfig, running

GEMMA, PHI = "google/gemma-2b-it", "microsoft/Phi-3-mini-4k-instruct"


def test_the_matrix_has_every_row_of_the_issue_with_its_targets_on_a_box_it_defines() -> None:
    rows = {r.name: r for r in matrix.rows()}
    assert list(rows) == [
        "random-mixed", "prefix-fits", "prefix-exceeds", "long-prompt", "bursty", "heterogeneous",
        "prefix-exceeds-2epp",
    ]  # fmt: skip
    assert all(r.box in matrix.BOXES for r in rows.values())
    for name in ("random-mixed", "prefix-fits", "long-prompt", "bursty"):
        row = rows[name]
        assert row.min_throughput == 1.0
        assert (matrix.target_at(row.ttft_targets, 1), matrix.target_at(row.ttft_targets, 3)) == (1.10, 1.05)
    cache_bound = rows["prefix-exceeds"]
    # The old ">= 3x round robin" is retired: the cache-bound row answers to its warm-cache ceiling.
    assert (cache_bound.min_throughput, cache_bound.min_of_ceiling) == (None, 0.9)
    assert cache_bound.ceiling_groups == 4
    assert matrix.target_at(cache_bound.ttft_targets, 3) == 0.15
    hetero = rows["heterogeneous"]
    assert (hetero.min_throughput, matrix.target_at(hetero.ttft_targets, 1)) == (2.0, 1.0)
    assert hetero.mode() == "closed+open"
    assert rows["bursty"].bursty is not None
    assert rows["bursty"].mode() == "closed+open"
    assert rows["prefix-exceeds-2epp"].relative_to == ("prefix-exceeds", 0.95)
    assert matrix.BOXES[rows["prefix-exceeds-2epp"].box].epp_replicas == 2


def test_a_ttft_target_is_the_one_of_the_largest_time_scale_at_or_below() -> None:
    targets = matrix.PLAIN_TTFT
    assert [matrix.target_at(targets, t) for t in (0, 1, 2, 3, 10)] == [1.10, 1.10, 1.10, 1.05, 1.05]
    assert matrix.target_at((), 3) is None


def test_time_scales_parse_as_a_list_and_reject_nonsense() -> None:
    assert matrix.parse_time_scales("1,3") == (1.0, 3.0)
    assert matrix.parse_time_scales("3, 3 ,0.5") == (3.0, 0.5)
    for bad in ("", "fast", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            matrix.parse_time_scales(bad)


def test_the_matrix_runs_at_time_scales_1_and_3_unless_told_and_a_quick_run_at_1() -> None:
    assert matrix.chosen_time_scales(False, None, None) == (1.0, 3.0)
    assert matrix.chosen_time_scales(True, None, None) == (1.0,)
    assert matrix.chosen_time_scales(True, None, (1.0, 3.0)) == (1.0, 3.0)
    assert matrix.chosen_time_scales(False, 3.0, (1.0,)) == (3.0,)
    args = matrix.build_parser().parse_args(["--time-scales", "3,1"])
    assert matrix.chosen_time_scales(args.quick, args.time_scale, args.time_scales) == (3.0, 1.0)


def test_the_matrix_shows_the_epps_the_answers_as_the_one_box_does_unless_told_gkes_way() -> None:
    assert matrix.build_parser().parse_args([]).response_mode == "streamed"
    assert matrix.build_parser().parse_args(["--response-mode", "full-duplex"]).response_mode == "full-duplex"
    with pytest.raises(SystemExit):
        matrix.build_parser().parse_args(["--response-mode", "buffered"])


def test_a_row_cannot_be_both_poisson_and_bursty() -> None:
    workload = WorkloadConfig(models=[GEMMA], requests=4)
    with pytest.raises(ValueError, match="offered or bursty"):
        matrix.Row("x", "", "mixed", workload, 2, bursty=matrix.Bursty(0.5, 1.5, 0, 1, 1))


def test_the_bursty_arrivals_are_fractions_of_the_measured_rate_stretched_with_the_time_scale() -> None:
    burst = matrix.Bursty(base=0.25, burst=2.0, start=2, seconds=1, after=1)
    fast = burst.arrivals(capacity=40.0, time_scale=1.0, seed=5)
    slow = burst.arrivals(capacity=40.0 / 3, time_scale=3.0, seed=5)

    def within(offsets: list[float], start: float, end: float) -> int:
        return sum(start <= t < end for t in offsets)

    # Every arrival lies in the window (4 s at time scale 1, three times longer at 3).
    assert 3.0 < fast[-1] < 4.0
    assert 9.0 < slow[-1] < 12.0
    # At 3x slower pods the measured rate is a third and the window three times longer: the same
    # requests before, within and after the burst (the same seed draws the same gaps).
    assert len(fast) == len(slow)
    assert within(fast, 0, 2) == within(slow, 0, 6)
    assert within(fast, 2, 3) == within(slow, 6, 9)
    assert within(fast, 2, 3) > 4 * within(fast, 1, 2)  # 80/s in the burst against 10/s before
    with pytest.raises(ValueError, match="> 0"):
        burst.arrivals(capacity=0.0, time_scale=1.0, seed=5)


def test_the_long_prompt_row_sends_bodies_of_about_200_kb() -> None:
    [row] = [r for r in matrix.rows() if r.name == "long-prompt"]
    spec = generate(row.workload.model_copy(update={"requests": 1}))[0]
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


def _run(label: str, requests: int, seconds: float, ttft: float, model: str = GEMMA) -> RunResult:
    """A finished run: ``requests`` answers by ``model`` in ``seconds``, each first token after ``ttft`` s."""
    results = [
        RequestResult(i, GEMMA, start=0.0, attempts=[Attempt(200, model=model, pod="gemma-0")], e2e=2 * ttft,
                      ttft=ttft)
        for i in range(requests)
    ]  # fmt: skip
    return RunResult(label, "http://127.0.0.1:1", "now", seconds, True, results)


def test_the_open_loop_rate_is_a_fraction_of_round_robins_measured_rate() -> None:
    capacity = summarize(_run("round-robin", 100, 4.0, 0.05))  # 25 req/s closed loop
    assert matrix.offered_rate(capacity, 0.8) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="within"):
        matrix.offered_rate(capacity, 1.5)
    with pytest.raises(ValueError, match="answered nothing"):
        matrix.offered_rate(summarize(_run("round-robin", 0, 4.0, 0.05)), 0.8)


def test_the_cache_bound_row_is_judged_against_its_ceiling_and_ttft_at_equal_offered_load() -> None:
    [row] = [r for r in matrix.rows() if r.name == "prefix-exceeds"]
    closed = matrix.Pair(_run("gateway", 200, 10.0, 0.1), _run("round-robin", 100, 10.0, 0.3))
    # Open loop, the same arrivals to both: the gateway's first tokens come at a tenth of round robin's.
    open_loop = matrix.Pair(_run("gateway", 80, 10.0, 0.02), _run("round-robin", 80, 10.0, 0.2), 8.0)

    def judged(ceiling_requests: int, time_scale: float) -> matrix.RowResult:
        ceiling = _run("round-robin ceiling", ceiling_requests, 10.0, 0.1)
        return matrix.RowResult(row, time_scale, closed, open_loop, ceiling=ceiling)

    short, reached = judged(230, 1.0), judged(210, 3.0)
    matrix.judge([short, reached])
    assert [c.what for c in short.checks] == ["rate / ceiling", "TTFT p50", "gateway accuracy"]
    assert short.throughput == pytest.approx(2.0)  # shown, no longer a target
    assert short.ttft_p50 == pytest.approx(0.1)  # from the open loop, not the closed loop's 0.33
    assert short.of_ceiling == pytest.approx(20 / 23)
    assert not short.checks[0].passed
    assert reached.of_ceiling == pytest.approx(20 / 21)
    assert reached.checks[0].passed
    assert all(c.passed for c in reached.checks)
    [line] = matrix.ceiling_lines([short])
    assert line.startswith("prefix-exceeds @1: ceiling 23.0 req/s, TTFT p50 100 ms, n/a of prompt tokens")


def test_a_row_is_judged_at_each_time_scale_against_that_time_scales_targets() -> None:
    [row] = [r for r in matrix.rows() if r.name == "random-mixed"]
    [two] = [r for r in matrix.rows() if r.name == "prefix-exceeds-2epp"]
    closed = matrix.Pair(_run("gateway", 100, 10.0, 0.1), _run("round-robin", 100, 10.0, 0.1))
    # Open loop: the gateway's TTFT p50 is 1.08x round robin's: within 1.10x, not within 1.05x.
    open_loop = matrix.Pair(_run("gateway", 80, 10.0, 0.108), _run("round-robin", 80, 10.0, 0.1), 8.0)
    fast = matrix.RowResult(row, 1.0, closed, open_loop)
    slow = matrix.RowResult(row, 3.0, closed, open_loop)
    # The 2-replica row is compared with the single-replica row's ratio at its own time scale.
    cache = matrix.Pair(_run("gateway", 100, 10.0, 0.1), _run("round-robin", 50, 10.0, 0.1))
    [single] = [r for r in matrix.rows() if r.name == "prefix-exceeds"]
    single_fast = matrix.RowResult(single, 1.0, cache)
    two_fast = matrix.RowResult(two, 1.0, matrix.Pair(cache.gateway, _run("round-robin", 52, 10.0, 0.1)))
    two_slow = matrix.RowResult(two, 3.0, cache)
    matrix.judge([fast, slow, single_fast, two_fast, two_slow])
    [fast_ttft] = [c for c in fast.checks if c.what == "TTFT p50"]
    [slow_ttft] = [c for c in slow.checks if c.what == "TTFT p50"]
    assert (fast_ttft.target, fast_ttft.passed) == (1.10, True)
    assert (slow_ttft.target, slow_ttft.passed) == (1.05, False)
    relative = two_fast.checks[-1]
    assert relative.what == "throughput ratio / prefix-exceeds's"
    assert relative.value == pytest.approx((100 / 52) / 2.0)
    assert relative.passed
    assert two_slow.checks[-1].value is None
    assert not two_slow.checks[-1].passed
    table = matrix.format_matrix([fast, slow])
    assert table.splitlines()[0].split()[:3] == ["row", "time", "scale"]
    assert [line.split()[1] for line in table.splitlines()[2:]] == ["1", "3"]


async def test_a_row_runs_its_phases_against_both_urls_and_is_judged(tmp_path: Path) -> None:
    # Two fake "gateways": one answers every request right, the other (round robin) misroutes half.
    blind = FakeOpenAI([("gemma-0", GEMMA), ("phi-0", PHI)])
    workload = WorkloadConfig(models=[GEMMA], requests=12)
    row = matrix.Row("tiny", "two models", "mixed", workload, concurrency=3, open_requests=6)
    other = replace(row, name="tiny-relative", offered=None, relative_to=("tiny", 0.9))
    async with serving(FakeOpenAI([("gemma-0", GEMMA)])) as gateway, serving(blind) as round_robin:
        results = [
            await matrix.run_row(row, gateway.url, round_robin.url, time_scale=3.0),
            await matrix.run_row(other, gateway.url, round_robin.url, time_scale=3.0),
        ]
        calls = len(blind.calls)
    assert calls == 12 + 6 + 12  # round robin: closed loop, open loop, and the other row's closed loop
    matrix.judge(results)
    first = results[0]
    assert first.closed is not None
    assert first.open is not None
    gateway_summary, rr_summary = first.summaries
    assert gateway_summary.overall.accuracy == 1.0
    assert rr_summary.overall.accuracy == 0.5  # every other request reached the phi pod: a 404
    assert first.open.offered_rate == pytest.approx(0.8 * rr_summary.overall.requests_per_s)
    assert [len(run.results) for run in (first.open.gateway, first.open.round_robin)] == [6, 6]
    assert [c.what for c in first.checks] == ["throughput", "TTFT p50", "gateway accuracy"]
    assert first.checks[2].passed
    assert results[1].open is None
    assert results[1].checks[-1].what == "throughput ratio / tiny's"
    table = matrix.format_matrix(results)
    assert table.splitlines()[0].startswith("row")
    assert "tiny-relative" in table
    json_path, html_path = matrix.write_reports(results, {"quick": True}, tmp_path)
    data = json.loads(json_path.read_text())
    assert [(r["name"], r["time_scale"], r["mode"]) for r in data["rows"]] == [
        ("tiny", 3.0, "closed+open"), ("tiny-relative", 3.0, "closed"),
    ]  # fmt: skip
    assert data["rows"][0]["round_robin"]["overall"]["accuracy"] == 0.5
    assert data["rows"][0]["open_loop"]["offered_rate"] == pytest.approx(first.open.offered_rate)
    assert "data:image/png;base64," in html_path.read_text()


async def test_a_cache_bound_rows_closed_loops_are_measured_after_a_warm_pass_like_its_ceiling() -> None:
    # From cold, each group's first request misses whatever the picker does, while the ceiling is
    # measured warm: each side first sends the row's first requests unmeasured, on its own prompts.
    workload = WorkloadConfig(workload=Workload.SHARED_PREFIX, models=[GEMMA], requests=12, groups=3,
                              prompts_per_group=2, system_prompt_len=8, max_tokens=4)  # fmt: skip
    row = matrix.Row("warm", "cache-bound", "cache", workload, concurrency=2, offered=None, warmup=5)
    assert "after a warm pass of 5 requests" in row.pacing()
    gateway, rr = FakeOpenAI([("gemma-0", GEMMA)]), FakeOpenAI([("gemma-1", GEMMA)])
    async with serving(gateway), serving(rr):
        result = await matrix.run_row(row, gateway.url, rr.url)
        for side, run_result in ((gateway, result.closed.gateway), (rr, result.closed.round_robin)):
            assert len(side.calls) == 5 + 12
            assert len(run_result.results) == 12  # the warm pass is not in the figures
            systems = [body["messages"][0]["content"] for body in side.bodies]
            assert set(systems[:5]) <= set(systems[5:])  # it warmed the measured pass's prefixes
        assert not {b["messages"][0]["content"] for b in gateway.bodies} & {
            b["messages"][0]["content"] for b in rr.bodies
        }  # each side's own salt: neither finds the other's prompts cached
    assert result.of_ceiling is None


async def test_the_ceiling_is_round_robin_over_the_groups_that_fit_after_its_own_warm_pass() -> None:
    workload = WorkloadConfig(workload=Workload.SHARED_PREFIX, models=[GEMMA], requests=12, groups=3,
                              prompts_per_group=2, system_prompt_len=8, max_tokens=4)  # fmt: skip
    row = matrix.Row("ceiling", "cache-bound", "cache", workload, concurrency=2, offered=None,
                     ceiling_groups=1, ceiling_warmup=4)  # fmt: skip
    gateway, rr = FakeOpenAI([("gemma-0", GEMMA)]), FakeOpenAI([("gemma-1", GEMMA)])
    async with serving(gateway), serving(rr):
        result = await matrix.run_row(row, gateway.url, rr.url)
    assert result.ceiling is not None
    assert len(result.ceiling.results) == 12  # its warm pass is not in the figures
    assert len(rr.calls) == 12 + 4 + 12  # round robin's closed loop, the ceiling's warm and measured passes
    ceiling_prompts = {body["messages"][0]["content"] for body in rr.bodies[12:]}
    assert len(ceiling_prompts) == 1  # the one group that fits


def test_a_check_passes_only_on_its_side_of_the_target() -> None:
    assert matrix.Check("throughput", 1.3, 1.3, at_least=True).passed
    assert not matrix.Check("throughput", 0.99, 1.0, at_least=True).passed
    assert matrix.Check("TTFT p50", 0.09, 0.1, at_least=False).passed
    assert not matrix.Check("TTFT p50", None, 0.1, at_least=False).passed


def test_an_unknown_row_is_refused_naming_the_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert matrix.main(["--rows", "nope"]) == 2
    assert "unknown rows nope; rows: random-mixed," in capsys.readouterr().err


async def test_the_ceiling_can_be_checked_for_hits_the_pods_report_cached_prompt_tokens() -> None:
    # One simulated pod; the same shared-prefix request twice in a row: the second finds the first's
    # prompt in the pod's prefix cache and says so (usage.prompt_tokens_details.cached_tokens, as
    # vLLM with --enable-prompt-tokens-details).
    config = SimConfig(models=[GEMMA], pod_name="gemma-0", time_scale=0.05, enable_prompt_tokens_details=True)
    workload = WorkloadConfig(workload=Workload.SHARED_PREFIX, models=[GEMMA], requests=1, groups=1,
                              prompts_per_group=1, system_prompt_len=256, max_tokens=4)  # fmt: skip
    async with running(config) as sim:
        for stream in (True, False):
            salted = generate(workload.model_copy(update={"prefix_salt": f"{stream} "})) * 2
            result = await run(sim.url, salted, concurrency=1, stream=stream, progress=False)
            first, second = result.results
            assert first.cached_tokens == 0
            assert 0 < second.cached_tokens <= second.prompt_tokens
            summary = summarize(result).overall
            assert summary.cached_prompt_fraction == pytest.approx(
                second.cached_tokens / (first.prompt_tokens + second.prompt_tokens)
            )


def test_an_open_loop_row_prints_its_ttft_tail_beside_the_p50() -> None:
    # The heterogeneous row's median request finds a fast idle pod on either side; where the picks
    # differ shows in the mean and the tail, printed beside the table (no target).
    [row] = [r for r in matrix.rows() if r.name == "heterogeneous"]
    closed = matrix.Pair(_run("gateway", 100, 5.0, 0.1), _run("round-robin", 100, 10.0, 0.1))
    slow_tail = _run("round-robin", 80, 10.0, 0.05)
    for r in slow_tail.results[-20:]:  # a quarter of round robin's requests on the slow pod
        r.ttft = 0.4
    open_loop = matrix.Pair(_run("gateway", 80, 10.0, 0.05), slow_tail, 8.0)
    [line] = matrix.tail_lines([matrix.RowResult(row, 1.0, closed, open_loop)])
    assert line.startswith("heterogeneous @1: open loop TTFT mean 50 vs 138 ms (0.36x), p95 50 vs 400 ms")
    assert matrix.tail_lines([matrix.RowResult(row, 1.0, closed)]) == []
