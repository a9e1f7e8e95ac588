"""``python -m bench matrix`` (``make bench-matrix``): the gateway against round robin, workload by workload.

Each row runs one workload against the gateway and against Envoy round robin over the same pods
(what a plain Kubernetes Service does), in the same run, on the one box it needs (started here, one
at a time, once per time scale: ``--time-scales 1,3`` by default). A row compares throughput closed
loop (fixed concurrency) and TTFT/E2E open loop (the same Poisson arrivals to both sides at 80% of
round robin's closed-loop rate, measured just before); a cache-bound row is judged against its
ceiling, the same box's warm-cache rate (``Row``, docs/matrix.md). Its ratios (gateway ÷ round
robin) are printed next to their targets with PASS or FAIL, in one table beside the machine's CPUs
and load average, and written as JSON and HTML.

Every run's shared prefixes carry their own salt: no run finds another's prefixes in a pod's cache.
Figures are measured, never assumed; on a shared machine they move from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import math
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import matplotlib.pyplot as plt
from epp.settings import EppSettings

from bench import elastic, flush
from bench.client import RunResult, run
from bench.report import Report, cdf_plot, png
from bench.scale import QUICK, ScaleSettings, format_scale, run_scale
from bench.stats import RunSummary, ratio, summarize
from bench.workloads import Workload, WorkloadConfig, bursty_arrivals, generate, poisson_arrivals
from onebox.box import OneBox
from onebox.envoy import ResponseMode
from onebox.topology import ModelSpec, SimOptions, Topology

GEMMA, PHI = "google/gemma-2b-it", "microsoft/Phi-3-mini-4k-instruct"


@dataclass(frozen=True)
class BoxSpec:
    """A one box a row runs on: its topology and how many EPP replicas each pool has."""

    name: str
    topology: Topology
    epp_replicas: int = 1
    about: str = ""


def _pods(
    name: str, served: str, replicas: int, sim: SimOptions, pods: dict[int, SimOptions] | None = None
) -> ModelSpec:
    return ModelSpec(name=name, served_name=served, replicas=replicas, sim=sim, pods=pods or {})


# Each pod's KV cache holds 1,024 blocks of 16 tokens (16k tokens): 4 prompts of 2,000 tokens fit
# in every pod, 16 of them only in the four pods together.
_SMALL_CACHE = SimOptions(kv_cache_blocks=1024)
# Four slots per pod (so a Python client can push it past its capacity) and room for 50k-token
# prompts (~200 KB bodies) with a prefill cheap enough to send dozens of them.
_LONG = SimOptions(max_num_seqs=4, kv_cache_blocks=8192, max_model_len=65536, per_token_us=10)
_EIGHT_SLOTS = SimOptions(max_num_seqs=8)
_SLOW_HALF = SimOptions(max_num_seqs=4, itl_ms=24, prefill_overhead_ms=60, per_token_us=500)

BOXES = {
    box.name: box
    for box in (
        BoxSpec("mixed", Topology(name="mixed", models=[
            _pods("gemma", GEMMA, 2, SimOptions()), _pods("phi3", PHI, 2, SimOptions()),
        ]), about="two models, two pods each, a pool each"),
        BoxSpec("cache", Topology(name="cache", models=[_pods("gemma", GEMMA, 4, _SMALL_CACHE)]),
                about="four pods of one model, 16k-token KV cache each"),
        BoxSpec("cache-2epp", Topology(name="cache", models=[_pods("gemma", GEMMA, 4, _SMALL_CACHE)]),
                epp_replicas=2, about="the same, with two EPP replicas"),
        BoxSpec("long", Topology(name="long", models=[_pods("gemma", GEMMA, 4, _LONG)]),
                about="four pods with 4 slots each and 64k-token context"),
        BoxSpec("hetero", Topology(name="hetero", models=[
            _pods("gemma", GEMMA, 4, _EIGHT_SLOTS, {0: _SLOW_HALF}),
        ]), about="four pods; gemma-0 has half the slots and is twice as slow"),
    )
}  # fmt: skip


# Of round robin's closed-loop rate, the arrival rate both sides get in a row's open-loop phase:
# a load both can carry, so neither side's TTFT is its queue growing without end.
OFFERED_FRACTION = 0.8
# TTFT p50 targets (gateway / round robin) by time scale: the slower simulator (3: closer to T4 or
# v6e timings for the seeds' models) gets the tighter one; a time scale takes the target of the
# largest listed time scale at or below it (the smallest listed one below them all).
PLAIN_TTFT: tuple[tuple[float, float], ...] = ((1.0, 1.10), (3.0, 1.05))
DEFAULT_TIME_SCALES = (1.0, 3.0)


def target_at(targets: Sequence[tuple[float, float]], time_scale: float) -> float | None:
    """The target for ``time_scale`` from ``(time scale, target)`` pairs; None when there are none."""
    if not targets:
        return None
    ordered = sorted(targets)
    chosen = ordered[0][1]
    for scale, target in ordered:
        if scale <= time_scale:
            chosen = target
    return chosen


@dataclass(frozen=True)
class Bursty:
    """Poisson arrivals at ``base`` x round robin's measured rate, at ``burst`` x that rate from
    ``start`` s for ``seconds`` s, then at ``base`` again for ``after`` s: every arrival within that
    window, however many (seconds at time scale 1: the window stretches with the time scale, as the
    measured rate shrinks, so a run holds about as many requests at any time scale)."""

    base: float
    burst: float
    start: float
    seconds: float
    after: float

    def arrivals(self, capacity: float, time_scale: float, seed: int) -> list[float]:
        if capacity <= 0:
            raise ValueError(f"round robin's rate must be > 0 requests/s, got {capacity}")
        stretch = max(time_scale, 1e-9)
        end = (self.start + self.seconds + self.after) * stretch
        # Enough draws to pass the window's end (its expected count, four times over, and some).
        count = 4 * math.ceil(capacity * (self.base * (self.start + self.after) + self.burst * self.seconds)
                              * stretch) + 16  # fmt: skip
        offsets = bursty_arrivals(self.base * capacity, self.burst * capacity, self.start * stretch,
                                  self.seconds * stretch, count, seed)  # fmt: skip
        return [t for t in offsets if t < end]

    def describe(self) -> str:
        return (
            f"Poisson {self.base:g}x round robin's rate, {self.burst:g}x from {self.start:g} s for "
            f"{self.seconds:g} s, then {self.base:g}x for {self.after:g} s (seconds x time scale)"
        )


@dataclass(frozen=True)
class Row:
    """One workload of the matrix and its targets (ratios gateway ÷ round robin).

    A row runs up to three phases on its box, each against the gateway and round robin in turn:
    - closed loop: ``concurrency`` requests in flight (throughput compared). Round robin's rate there
      is the row's measured capacity.
    - open loop (``offered`` or ``bursty`` set): Poisson arrivals at ``offered`` x that capacity, or
      shaped by ``bursty`` (a burst above it), the same arrival times to both sides (TTFT p50 and
      E2E p50 compared at equal offered load).
    - ceiling (``ceiling_groups`` set, a cache-bound row): round robin over warm caches, the workload
      cut to the groups that fit in every pod, a warm pass then a measured one: the box's rate when
      every request hits at balanced load. The gateway's closed-loop rate must reach
      ``min_of_ceiling`` of it.

    ``warmup``: each side's closed loop follows an unmeasured warm pass of that many of the row's
    requests, as the ceiling's does, so both are steady-state rates: from cold, each group's first
    request misses whatever the picker does.
    """

    name: str
    about: str
    box: str
    workload: WorkloadConfig
    concurrency: int
    offered: float | None = OFFERED_FRACTION
    bursty: Bursty | None = None
    # Requests per side in the Poisson open-loop phase (default: the workload's); a bursty row sends
    # every arrival of its window.
    open_requests: int | None = None
    min_throughput: float | None = 1.0
    ttft_targets: tuple[tuple[float, float], ...] = PLAIN_TTFT
    ceiling_groups: int | None = None
    ceiling_warmup: int = 96  # requests of the ceiling's warm pass (every pod sees every group)
    warmup: int = 0
    min_of_ceiling: float = 0.9
    # (row name, least fraction of that row's throughput ratio this row's must reach)
    relative_to: tuple[str, float] | None = None

    def __post_init__(self) -> None:
        if self.bursty is not None and self.offered is not None:
            raise ValueError(f"row {self.name}: give offered or bursty, not both")

    @property
    def open_loop(self) -> bool:
        return self.offered is not None or self.bursty is not None

    def mode(self) -> str:
        return "closed+open" if self.open_loop else "closed"

    def pacing(self) -> str:
        parts = [f"closed loop at concurrency {self.concurrency}"]
        if self.bursty is not None:
            parts.append(self.bursty.describe())
        elif self.offered is not None:
            parts.append(f"open loop: Poisson at {self.offered:g}x round robin's closed-loop rate")
        if self.warmup:
            parts[0] += f" after a warm pass of {self.warmup} requests"
        if self.ceiling_groups is not None:
            parts.append(f"ceiling: round robin, warm caches, {self.ceiling_groups} groups")
        return "; ".join(parts)


def rows(quick: bool = False) -> list[Row]:
    """The matrix; ``quick``: about a sixth of the requests (a smoke test of the whole thing)."""

    def n(requests: int) -> int:
        return max(16, requests // 6) if quick else requests

    def prefix(groups: int, requests: int) -> WorkloadConfig:
        return WorkloadConfig(
            workload=Workload.SHARED_PREFIX, models=[GEMMA], requests=n(requests), groups=groups,
            prompts_per_group=16, system_prompt_len=2000, question_len=32, max_tokens=16, seed=3,
        )  # fmt: skip

    cache_bound = prefix(16, 320)
    burst = Bursty(base=0.5, burst=1.5, start=2, seconds=4, after=2)
    if quick:
        burst = Bursty(base=0.5, burst=1.5, start=1, seconds=1.5, after=1)
    fair_ttft = "TTFT compared open loop, at equal offered load"
    return [
        Row("random-mixed", f"random prompts, two models (one pool each); {fair_ttft}", "mixed",
            WorkloadConfig(models=[GEMMA, PHI], requests=n(160), max_tokens=32, seed=1), concurrency=16,
            open_requests=n(120)),
        Row("prefix-fits", f"4 groups x 2,000-token system prompt: fits in every pod's cache; {fair_ttft}",
            "cache", prefix(4, 160), concurrency=16, open_requests=n(120)),
        Row("prefix-exceeds", "16 groups x 2,000 tokens: more than one pod's cache (cache-bound); rate "
            f"against the box's warm-cache ceiling; {fair_ttft}", "cache",
            cache_bound, concurrency=16, open_requests=n(120), min_throughput=None,
            ttft_targets=((1.0, 0.15),), ceiling_groups=4, ceiling_warmup=n(96), warmup=n(96)),
        Row("long-prompt", f"50,000-token prompts (~200 KB bodies); {fair_ttft}", "long",
            WorkloadConfig(workload=Workload.LONG_PROMPT, models=[GEMMA], requests=n(48), prompt_len=50_000,
                           max_tokens=16, seed=4), concurrency=8, open_requests=n(48)),
        Row("bursty", "throughput closed loop at the pods' 16 slots; TTFT over the same Poisson arrivals "
            "to both sides, with a burst above round robin's measured rate", "long",
            WorkloadConfig(models=[GEMMA], requests=n(120), max_tokens=32, seed=5), concurrency=16,
            offered=None, bursty=burst),
        Row("heterogeneous", "one pod with half the slots, twice as slow: throughput closed loop, "
            f"{fair_ttft}", "hetero",
            WorkloadConfig(models=[GEMMA], requests=n(160), max_tokens=32, seed=6), concurrency=32,
            open_requests=n(96), min_throughput=2.0, ttft_targets=((1.0, 1.0),)),
        Row("prefix-exceeds-2epp", "the cache-bound row with 2 EPP replicas (closed loop: its "
            "throughput ratio against the single replica's)", "cache-2epp",
            cache_bound, concurrency=16, offered=None, min_throughput=None, ttft_targets=(),
            warmup=n(96), relative_to=("prefix-exceeds", 0.95)),
    ]  # fmt: skip


@dataclass(frozen=True)
class Check:
    what: str
    value: float | None
    target: float
    at_least: bool  # True: value >= target; False: value <= target

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.target if self.at_least else self.value <= self.target

    def __str__(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.2f}x"
        sign = ">=" if self.at_least else "<="
        return f"{self.what} {value} ({sign} {self.target:g}x) {'PASS' if self.passed else 'FAIL'}"


@dataclass
class Pair:
    """One phase of a row: the gateway's run and round robin's, with the same requests."""

    gateway: RunResult
    round_robin: RunResult
    offered_rate: float | None = None  # requests/s offered to each side (open loop)

    @property
    def summaries(self) -> tuple[RunSummary, RunSummary]:
        return summarize(self.gateway), summarize(self.round_robin)

    def ratio(self, figure: Callable[[RunSummary], float | None]) -> float | None:
        gateway, rr = self.summaries
        return ratio(figure(gateway), figure(rr))


def _rate(s: RunSummary) -> float | None:
    return s.overall.requests_per_s


def _ttft(s: RunSummary) -> float | None:
    return s.overall.ttft.p50


def _e2e(s: RunSummary) -> float | None:
    return s.overall.e2e.p50


def offered_rate(capacity: RunSummary, fraction: float) -> float:
    """The open-loop arrival rate: ``fraction`` of round robin's measured closed-loop rate."""
    if not 0 < fraction <= 1:
        raise ValueError(f"offered fraction must be within (0, 1], got {fraction}")
    rate = capacity.overall.requests_per_s
    if rate <= 0:
        raise ValueError(f"round robin answered nothing in {capacity.duration_s:.1f} s: no rate to offer")
    return fraction * rate


@dataclass
class RowResult:
    row: Row
    time_scale: float
    closed: Pair  # gateway and round robin, closed loop: round robin's rate is the row's capacity
    open: Pair | None = None
    ceiling: RunResult | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def latency_pair(self) -> Pair:
        """Where TTFT and E2E are compared: the open loop, or the closed loop in a row without one."""
        return self.open or self.closed

    @property
    def summaries(self) -> tuple[RunSummary, RunSummary]:
        """Gateway and round robin in the closed loop, where the row's throughput is compared."""
        return self.closed.summaries

    @property
    def throughput(self) -> float | None:
        return self.closed.ratio(_rate)

    @property
    def ttft_p50(self) -> float | None:
        return self.latency_pair.ratio(_ttft)

    @property
    def e2e_p50(self) -> float | None:
        return self.latency_pair.ratio(_e2e)

    @property
    def of_ceiling(self) -> float | None:
        """The gateway's closed-loop rate ÷ the warm-cache ceiling's."""
        if self.ceiling is None:
            return None
        return ratio(summarize(self.closed.gateway).overall.requests_per_s,
                     summarize(self.ceiling).overall.requests_per_s)  # fmt: skip

    @property
    def gateway_runs(self) -> list[RunResult]:
        return [p.gateway for p in (self.closed, self.open) if p is not None]


def judge(results: Sequence[RowResult]) -> None:
    """Fill every row's checks: its own targets, and those relative to another row's ratio at the same
    time scale."""
    by_key = {(r.row.name, r.time_scale): r for r in results}
    for result in results:
        row = result.row
        checks = []
        if row.min_throughput is not None:
            checks.append(Check("throughput", result.throughput, row.min_throughput, at_least=True))
        if row.ceiling_groups is not None:
            checks.append(Check("rate / ceiling", result.of_ceiling, row.min_of_ceiling, at_least=True))
        ttft_target = target_at(row.ttft_targets, result.time_scale)
        if ttft_target is not None:
            checks.append(Check("TTFT p50", result.ttft_p50, ttft_target, at_least=False))
        accuracy = min((summarize(run).overall.accuracy for run in result.gateway_runs), default=None)
        checks.append(Check("gateway accuracy", accuracy, 1.0, at_least=True))
        if row.relative_to is not None:
            other_name, fraction = row.relative_to
            other = by_key.get((other_name, result.time_scale))
            relative = ratio(result.throughput, other.throughput) if other is not None else None
            checks.append(Check(f"throughput ratio / {other_name}'s", relative, fraction, at_least=True))
        result.checks = checks


async def _one_side(
    row: Row, label: str, url: str, *, salt: str, concurrency: int | None = None,
    arrivals: list[float] | None = None, requests: int | None = None, progress: bool = False,
    update: dict[str, Any] | None = None,
) -> RunResult:
    changes: dict[str, Any] = {"prefix_salt": salt, **(update or {})}
    if requests is not None:
        changes["requests"] = requests
    specs = generate(row.workload.model_copy(update=changes))
    return await run(url, specs, concurrency=concurrency, arrivals=arrivals, stream=True,
                     request_timeout=120.0, label=label, progress=progress,
                     model_header=label.startswith("round-robin"))  # fmt: skip


async def run_row(
    row: Row, gateway_url: str, round_robin_url: str, *, time_scale: float = 1.0, progress: bool = False
) -> RowResult:
    """The row's phases, each against the gateway then round robin, the same requests with each run's own
    prefix salt (no run finds another's prompts in a pod's cache)."""
    rr = "round-robin"

    async def closed_loop(
        label: str, url: str, salt: str, warmup: int, update: dict[str, Any] | None = None
    ) -> RunResult:
        """A closed loop at the row's concurrency, after an unmeasured warm pass of ``warmup`` of
        its requests (none if 0)."""
        if warmup:
            await _one_side(row, f"{label} warm-up", url, salt=salt, concurrency=row.concurrency,
                            progress=progress, update={**(update or {}), "requests": warmup})  # fmt: skip
        return await _one_side(row, label, url, salt=salt, concurrency=row.concurrency, progress=progress,
                               update=update)  # fmt: skip

    gateway = await closed_loop("gateway", gateway_url, "gateway ", row.warmup)
    capacity = await closed_loop(rr, round_robin_url, f"{rr} ", row.warmup)
    result = RowResult(row, time_scale, Pair(gateway, capacity))
    if row.open_loop:
        if row.bursty is not None:
            arrivals = row.bursty.arrivals(summarize(capacity).overall.requests_per_s, time_scale,
                                           row.workload.seed)  # fmt: skip
            count = len(arrivals)
            rate = count / max(arrivals[-1], 1e-9) if count > 1 else float(count)  # the mean offered
        else:
            assert row.offered is not None
            count = row.open_requests or row.workload.requests
            rate = offered_rate(summarize(capacity), row.offered)
            arrivals = poisson_arrivals(rate, count, row.workload.seed)
        sides = [await _one_side(row, label, url, salt=f"{label} open ", arrivals=arrivals, requests=count,
                                 progress=progress)
                 for label, url in (("gateway", gateway_url), (rr, round_robin_url))]  # fmt: skip
        result.open = Pair(sides[0], sides[1], offered_rate=rate)
    if row.ceiling_groups is not None:
        result.ceiling = await closed_loop(f"{rr} ceiling", round_robin_url, "ceiling ", row.ceiling_warmup,
                                           {"groups": row.ceiling_groups})  # fmt: skip
    return result


async def run_matrix(
    selected: Sequence[Row], *, time_scales: Sequence[float] = (1.0,), progress: bool = False,
    out: Callable[[str], None] = print, epp_settings: dict[str, Any] | None = None,
    response_mode: ResponseMode = "streamed", share_picks: bool = True,
) -> list[RowResult]:
    """Every row at every time scale, box by box (each box started once per time scale, with its
    round-robin twin, then stopped). Results in row order, each row's time scales in the given order.
    ``epp_settings``: more settings for every EPP (``EppSettings`` fields); ``response_mode``: how the
    gateway shows the EPPs the answers (``OneBox``); ``share_picks``: a pool's EPP replicas tell each
    other their picks (``epp.peers``; False: each learns alone)."""
    results: dict[tuple[str, float], RowResult] = {}
    for time_scale in time_scales:
        for box_name in dict.fromkeys(r.box for r in selected):
            spec = BOXES[box_name]
            started = time.monotonic()
            async with OneBox(spec.topology, round_robin=True, time_scale=time_scale,
                              epp_replicas=spec.epp_replicas, epp_settings=epp_settings,
                              response_mode=response_mode, share_picks=share_picks) as box:  # fmt: skip
                out(f"box {box_name} ({spec.about}) at time scale {time_scale:g} up in "
                    f"{time.monotonic() - started:.1f} s")  # fmt: skip
                for row in (r for r in selected if r.box == box_name):
                    row_started = time.monotonic()
                    results[row.name, time_scale] = await run_row(
                        row, box.gateway_url, box.round_robin_url, time_scale=time_scale, progress=progress
                    )
                    out(f"  {row.name}: {time.monotonic() - row_started:.1f} s (load average "
                        f"{os.getloadavg()[0]:.1f})")  # fmt: skip
    ordered = [results[r.name, ts] for r in selected for ts in time_scales]
    judge(ordered)
    return ordered


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


TABLE_COLUMNS = (
    "row", "time scale", "mode", "gw req/s", "RR req/s", "req/s ratio", "target", "offered req/s",
    "gw TTFT p50 ms", "RR TTFT p50 ms", "TTFT ratio", "target", "E2E p50 ratio", "gw accuracy", "verdict",
)  # fmt: skip


def _check(checks: Sequence[Check], what: str) -> Check | None:
    return next((c for c in checks if c.what == what), None)


def _cell(value: float | None, check: Check | None) -> str:
    return _x(value) + ("" if check is None else f" {'ok' if check.passed else 'FAIL'}")


def _target(check: Check | None) -> str:
    return "-" if check is None else f"{'>=' if check.at_least else '<='} {check.target:g}x"


def table_rows(results: Sequence[RowResult]) -> list[list[str]]:
    lines = []
    for r in results:
        gateway, rr = r.summaries
        gw_latency, rr_latency = r.latency_pair.summaries
        throughput, ttft = _check(r.checks, "throughput"), _check(r.checks, "TTFT p50")
        accuracy = _check(r.checks, "gateway accuracy")
        shown = {"throughput", "TTFT p50", "gateway accuracy"}
        extra = [c for c in r.checks if c.what not in shown]
        verdict = "PASS" if all(c.passed for c in r.checks) else "FAIL"
        offered = "-" if r.open is None or r.open.offered_rate is None else f"{r.open.offered_rate:.1f}"
        lines.append([
            r.row.name, f"{r.time_scale:g}", r.row.mode(),
            f"{gateway.overall.requests_per_s:.1f}", f"{rr.overall.requests_per_s:.1f}",
            _cell(r.throughput, throughput), _target(throughput), offered,
            _ms(gw_latency.overall.ttft.p50), _ms(rr_latency.overall.ttft.p50),
            _cell(r.ttft_p50, ttft), _target(ttft), _x(r.e2e_p50),
            "n/a" if accuracy is None or accuracy.value is None else f"{accuracy.value * 100:.1f}%",
            verdict + "".join(f"; {c}" for c in extra),
        ])  # fmt: skip
    return lines


def format_matrix(results: Sequence[RowResult]) -> str:
    grid = [list(TABLE_COLUMNS), *table_rows(results)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(TABLE_COLUMNS))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in grid]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def _pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction * 100:.0f}%"


def ceiling_lines(results: Sequence[RowResult]) -> list[str]:
    """For each cache-bound row: its ceiling's rate and how much of the prompts the pods found cached
    (the ceiling should be all hits; the sides' closed-loop figures beside it)."""
    lines = []
    for r in results:
        if r.ceiling is None:
            continue
        ceiling = summarize(r.ceiling).overall
        gateway, rr = r.summaries
        lines.append(
            f"{_label(r)}: ceiling {ceiling.requests_per_s:.1f} req/s, TTFT p50 {_ms(ceiling.ttft.p50)} ms, "
            f"{_pct(ceiling.cached_prompt_fraction)} of prompt tokens cached (closed loop: gateway "
            f"{_pct(gateway.overall.cached_prompt_fraction)}, round robin "
            f"{_pct(rr.overall.cached_prompt_fraction)})"
        )
    return lines


def _ttft_mean(s: RunSummary) -> float | None:
    return s.overall.ttft.mean


def _ttft_p95(s: RunSummary) -> float | None:
    return s.overall.ttft.p95


def tail_lines(results: Sequence[RowResult]) -> list[str]:
    """For each row with an open loop: both sides' TTFT mean and p95 there, and the ratios. The p50
    alone hides where the picks differ when most requests find an idle pod on either side (the
    heterogeneous row: the median request is on a fast pod under round robin too); not a target."""
    lines = []
    for r in results:
        if r.open is None:
            continue
        gateway, rr = r.open.summaries
        lines.append(
            f"{_label(r)}: open loop TTFT mean {_ms(_ttft_mean(gateway))} vs {_ms(_ttft_mean(rr))} ms "
            f"({_x(r.open.ratio(_ttft_mean))}), p95 {_ms(_ttft_p95(gateway))} vs {_ms(_ttft_p95(rr))} ms "
            f"({_x(r.open.ratio(_ttft_p95))}), gateway vs round robin"
        )
    return lines


def machine() -> dict[str, Any]:
    """The machine the figures came from: CPUs and the load averages (1, 5, 15 min) now."""
    one, five, fifteen = os.getloadavg()
    return {"cpus": os.cpu_count(), "load_average": [round(one, 2), round(five, 2), round(fifteen, 2)]}


def describe_machine(before: dict[str, Any], after: dict[str, Any]) -> str:
    def loads(m: dict[str, Any]) -> str:
        return "/".join(f"{value:.1f}" for value in m["load_average"])

    return (f"machine: {after['cpus']} CPUs; load average (1/5/15 min) {loads(before)} before, "
            f"{loads(after)} after: other work on this machine moves the figures")  # fmt: skip


def _pair_dict(pair: Pair | None) -> dict[str, Any] | None:
    if pair is None:
        return None
    gateway, rr = pair.summaries
    return {"offered_rate": pair.offered_rate, "gateway": gateway.model_dump(mode="json"),
            "round_robin": rr.model_dump(mode="json")}  # fmt: skip


def to_dict(results: Sequence[RowResult], settings: dict[str, Any]) -> dict[str, Any]:
    rows_out = []
    for r in results:
        gateway, rr = r.summaries
        rows_out.append({
            "name": r.row.name, "time_scale": r.time_scale, "mode": r.row.mode(), "about": r.row.about,
            "box": r.row.box, "box_about": BOXES[r.row.box].about if r.row.box in BOXES else "",
            "pacing": r.row.pacing(), "workload": r.row.workload.model_dump(mode="json"),
            "ratios": {"requests_per_s": r.throughput, "ttft_p50": r.ttft_p50, "e2e_p50": r.e2e_p50,
                       "ttft_mean": r.latency_pair.ratio(_ttft_mean),
                       "ttft_p95": r.latency_pair.ratio(_ttft_p95),
                       "of_ceiling": r.of_ceiling},
            "checks": [{"what": c.what, "value": c.value, "target": c.target,
                        "at_least": c.at_least, "passed": c.passed} for c in r.checks],
            "gateway": gateway.model_dump(mode="json"), "round_robin": rr.model_dump(mode="json"),
            "closed_loop": _pair_dict(r.closed), "open_loop": _pair_dict(r.open),
            "ceiling": None if r.ceiling is None else summarize(r.ceiling).model_dump(mode="json"),
        })  # fmt: skip
    return {
        "title": "Workload matrix: gateway vs round robin over the same pods",
        "settings": settings,
        "passed": all(c.passed for r in results for c in r.checks),
        "rows": rows_out,
    }


def _label(r: RowResult) -> str:
    return f"{r.row.name} @{r.time_scale:g}"


def _ratio_plot(results: Sequence[RowResult]) -> str:
    fig, ax = plt.subplots(figsize=(9, 3.8))
    xs = list(range(len(results)))
    throughput = [r.throughput or 0.0 for r in results]
    ttft = [r.ttft_p50 or 0.0 for r in results]
    ax.bar([x - 0.2 for x in xs], throughput, width=0.4, label="req/s ratio (higher is better)")
    ax.bar([x + 0.2 for x in xs], ttft, width=0.4, label="TTFT p50 ratio (lower is better)")
    for x, r in zip(xs, results, strict=True):
        throughput_check, ttft_check = _check(r.checks, "throughput"), _check(r.checks, "TTFT p50")
        if throughput_check is not None:
            ax.hlines(throughput_check.target, x - 0.4, x, colors="black", linestyles="dashed")
        if ttft_check is not None:
            ax.hlines(ttft_check.target, x, x + 0.4, colors="red", linestyles="dotted")
    ax.axhline(1.0, color="grey", linewidth=0.6)
    ax.set_yscale("log")
    ax.set_xticks(xs, [_label(r) for r in results], rotation=25, fontsize=7)
    ax.set_ylabel("gateway / round robin")
    ax.set_title("Ratios per row and time scale (dashes: targets)")
    ax.legend(fontsize=7)
    return png(fig)


def render_html(results: Sequence[RowResult], settings: dict[str, Any]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in line) + "</tr>" for line in table_rows(results)
    )
    sections = []
    for r in results:
        latency = r.latency_pair
        gateway, rr = latency.summaries
        phase = "open loop" if r.open is not None else "closed loop"
        report = Report(title=r.row.name, settings={}, runs=[latency.gateway, latency.round_robin])
        plot = cdf_plot(report, "ttft", f"{_label(r)}: time to first token ({phase})")
        pods = "; ".join(
            f"{s.label}: " + ", ".join(f"{pod} {count}" for pod, count in s.overall.pods.items())
            for s in (gateway, rr)
        )
        checks = "".join(f"<li>{esc(str(c))}</li>" for c in r.checks)
        checks += "".join(f"<li>{esc(line)}</li>" for line in (*ceiling_lines([r]), *tail_lines([r])))
        sections.append(
            f"<h3>{esc(_label(r))}</h3><p>{esc(r.row.about)}; box {esc(r.row.box)}; time scale "
            f"{r.time_scale:g}; {esc(r.row.pacing())}; {r.row.workload.requests} requests per closed-loop "
            f"run</p><ul>{checks}</ul><p>answered by ({phase}): {esc(pods)}</p>"
            + (f'<img alt="TTFT CDF" src="data:image/png;base64,{plot}">' if plot else "")
        )
    css = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px}"
        "th{background:#f3f3f3}img{display:block;margin:1em 0}"
    )
    title = "Workload matrix: gateway vs round robin over the same pods"
    box = settings.get("machine_after") or {}
    machine_line = (f"<p>{box['cpus']} CPUs, load average (1/5/15 min) at the end "
                    f"{esc(str(box['load_average']))}</p>" if box else "")  # fmt: skip
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{css}</style></head>"
        f"<body><h1>{title}</h1>{machine_line}<table><tr>{head}</tr>{body}</table>"
        f'<img alt="ratios" src="data:image/png;base64,{_ratio_plot(results)}">'
        + "".join(sections)
        + f"<h2>Settings</h2><pre>{esc(json.dumps(settings, indent=2))}</pre></body></html>\n"
    )


def write_reports(
    results: Sequence[RowResult], settings: dict[str, Any], directory: Path
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    json_path = directory / f"matrix-{stamp}.json"
    html_path = directory / f"matrix-{stamp}.html"
    json_path.write_text(json.dumps(to_dict(results, settings), indent=2) + "\n")
    html_path.write_text(render_html(results, settings))
    return json_path, html_path


SCALE_ROW = "scale"  # bench.scale: 100 pods in a box of its own, minutes long; run only when named


@dataclass(frozen=True)
class SuiteOutcome:
    """What a suite's rows gave at one time scale: a verdict, console lines, rows for the JSON report."""

    passed: bool
    text: str
    rows: list[dict[str, object]]


@dataclass(frozen=True)
class Suite:
    """Rows another module runs on boxes of its own, with figures of its own (the elastic rows; a
    scale row or a cache-flush row can join the same way). ``run(names, quick, time_scale)`` runs the
    named rows; ``default``: in a run without ``--rows`` (False: only when named)."""

    name: str
    rows: tuple[str, ...]
    run: Callable[[Sequence[str], bool, float], Coroutine[Any, Any, SuiteOutcome]]
    default: bool = True
    # False: run once, at the first time scale (its figures do not depend on it).
    per_time_scale: bool = True


async def _elastic(names: Sequence[str], quick: bool, time_scale: float) -> SuiteOutcome:
    results = await elastic.run_elastic(names, quick=quick, time_scale=time_scale)
    passed = all(r.passed for r in results)
    return SuiteOutcome(passed, elastic.format_elastic(results), elastic.to_dict(results))


async def _flush(names: Sequence[str], quick: bool, time_scale: float) -> SuiteOutcome:
    results = await flush.run_flush(names, quick=quick, time_scale=time_scale)
    return SuiteOutcome(all(r.passed for r in results), flush.format_flush(results), flush.to_dict(results))


async def _scale(names: Sequence[str], quick: bool, time_scale: float) -> SuiteOutcome:
    result = await run_scale(QUICK if quick else ScaleSettings())
    return SuiteOutcome(result.passed, format_scale(result), [result.to_dict()])


SUITES: list[Suite] = [
    Suite("elastic", elastic.ROWS, _elastic),
    # Minutes long, boxes of their own: only when named.
    Suite("cache-flush", flush.ROWS, _flush, default=False),
    # The EPP's own CPU (scraping and picking): the simulators' time scale does not enter it.
    Suite("scale", (SCALE_ROW,), _scale, default=False, per_time_scale=False),
]


def parse_time_scales(text: str) -> tuple[float, ...]:
    """``"1,3"`` -> ``(1.0, 3.0)``: distinct, each >= 0, in the order given."""
    try:
        scales = tuple(dict.fromkeys(float(part) for part in text.split(",") if part.strip()))
    except ValueError:
        message = f"time scales are numbers separated by commas, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not scales or any(scale < 0 for scale in scales):
        raise argparse.ArgumentTypeError(f"time scales must be >= 0 and at least one, got {text!r}")
    return scales


def chosen_time_scales(quick: bool, one: float | None, many: tuple[float, ...] | None) -> tuple[float, ...]:
    """``--time-scale`` if given, else ``--time-scales``, else 1 and 3 (a quick run: 1 only)."""
    if one is not None:
        return parse_time_scales(str(one))
    if many is not None:
        return many
    return (1.0,) if quick else DEFAULT_TIME_SCALES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench matrix", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a sixth of the requests, at time scale 1 only unless --time-scales says "
                        "(a smoke test)")
    suite_rows = [name for suite in SUITES for name in suite.rows]
    parser.add_argument("--rows", help="comma-separated row names (default: all, the rows "
                        f"{', '.join(suite_rows)} of other modules included)")
    parser.add_argument("--time-scales", type=parse_time_scales, default=None,
                        help="simulator delay multipliers, each row run at each (default 1,3; --quick: 1)")
    parser.add_argument("--time-scale", type=float, default=None,
                        help="one time scale (same as --time-scales X)")
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"))
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument("--epp-setting", action="append", default=[], type=parse_epp_setting,
                        metavar="NAME=VALUE", help="an EPP setting for the matrix's boxes, e.g. "
                        "follow_answers_up_to=32 (repeatable; EppSettings field names)")
    parser.add_argument("--response-mode", choices=get_args(ResponseMode), default="streamed",
                        help="how the gateway's Envoy shows the EPPs the answers: streamed (headers, "
                        "then the body where an EPP reads it; default) or full-duplex (every chunk, "
                        "as GKE's gateway sends them)")
    parser.add_argument("--replicas-alone", action="store_true",
                        help="EPP replicas do not tell each other their picks (each learns from its own "
                        "alone, as before epp.peers): the 2-replica row without sharing")
    return parser  # fmt: skip


def parse_epp_setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if name.strip() not in EppSettings.model_fields:
        raise argparse.ArgumentTypeError(f"{name.strip()!r} is not an EPP setting")
    return name.strip(), value.strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    selected = rows(args.quick)
    time_scales = chosen_time_scales(args.quick, args.time_scale, args.time_scales)
    suites = {suite.name: [n for n in suite.rows] for suite in SUITES if suite.default}
    if args.rows:
        wanted = [name.strip() for name in args.rows.split(",") if name.strip()]
        known = [*(r.name for r in selected), *(n for suite in SUITES for n in suite.rows)]
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            print(f"bench matrix: unknown rows {', '.join(unknown)}; rows: {', '.join(known)}",
                  file=sys.stderr)
            return 2
        selected = [r for r in selected if r.name in wanted]
        suites = {suite.name: [n for n in suite.rows if n in wanted] for suite in SUITES}
    before = machine()
    print(f"machine: {before['cpus']} CPUs, load average (1/5/15 min) {before['load_average']}; time scales "
          f"{', '.join(f'{t:g}' for t in time_scales)}")  # fmt: skip
    started = time.monotonic()
    results = []
    if selected:
        epp_settings = dict(args.epp_setting) or None
        if epp_settings:
            print(f"EPP settings: {', '.join(f'{k}={v}' for k, v in epp_settings.items())}")
        if args.response_mode != "streamed":
            print(f"responses shown to the EPPs: {args.response_mode}")
        if args.replicas_alone:
            print("EPP replicas do not share their picks")
        results = asyncio.run(run_matrix(selected, time_scales=time_scales, progress=args.progress,
                                         epp_settings=epp_settings, response_mode=args.response_mode,
                                         share_picks=not args.replicas_alone))
    outcomes: list[tuple[Suite, float, SuiteOutcome]] = []
    for suite in SUITES:
        names = suites.get(suite.name) or []
        scales = time_scales if suite.per_time_scale else time_scales[:1]
        for time_scale in scales if names else ():
            print(f"{suite.name} rows at time scale {time_scale:g}:")
            outcomes.append((suite, time_scale, asyncio.run(suite.run(names, args.quick, time_scale))))
    after = machine()
    settings = {
        "quick": args.quick, "time_scales": list(time_scales), "machine_before": before,
        "machine_after": after, "seconds": round(time.monotonic() - started, 1),
        "epp_settings": dict(args.epp_setting), "response_mode": args.response_mode,
    }  # fmt: skip
    passed = all(c.passed for r in results for c in r.checks) and all(o.passed for _, _, o in outcomes)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    if results:
        print()
        print(describe_machine(before, after))
        print(format_matrix(results))
        for line in (*ceiling_lines(results), *tail_lines(results)):
            print(line)
        json_path, html_path = write_reports(results, settings, args.reports_dir)
        print(f"\nreports: {json_path}  {html_path}")
    for suite in SUITES:
        mine = [(time_scale, o) for s, time_scale, o in outcomes if s is suite]
        if not mine:
            continue
        for time_scale, outcome in mine:
            print(f"\n{suite.name} rows at time scale {time_scale:g}:")
            print(outcome.text)
        args.reports_dir.mkdir(parents=True, exist_ok=True)
        path = args.reports_dir / f"{suite.name}-{stamp}.json"
        rows_out = [{**row, "time_scale": time_scale} for time_scale, o in mine for row in o.rows]
        path.write_text(json.dumps({"settings": settings, "rows": rows_out}, indent=2) + "\n")
        print(f"\nreport: {path}")
    print(f"matrix took {settings['seconds']} s; {describe_machine(before, after)}")
    return 0 if passed else 1
