"""``python -m bench matrix`` (``make bench-matrix``): the gateway against round robin, workload by workload.

Each row runs one workload against the gateway and then against Envoy round robin over the same
pods (what a plain Kubernetes Service does), in the same run, on the one box it needs (started
here, one at a time). Its ratios (gateway ÷ round robin: successful requests/s and TTFT p50) are
printed next to their targets with PASS or FAIL, in one table, and written as JSON and HTML.

The two runs of a row send the same requests, except that each run's shared prefixes carry their
own salt: neither run finds the other's prefixes in a pod's cache. Figures are measured, never
assumed; on a shared machine they move from run to run (the report says how many CPUs).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from bench import elastic, flush
from bench.client import RunResult, run
from bench.report import Report, cdf_plot, png
from bench.scale import QUICK, ScaleSettings, format_scale, run_scale
from bench.stats import RunSummary, ratio, summarize
from bench.workloads import Workload, WorkloadConfig, bursty_arrivals, generate
from onebox.box import OneBox
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


@dataclass(frozen=True)
class Bursty:
    """Poisson arrivals at ``rate``/s, at ``burst_rate``/s from ``start`` s for ``seconds`` s."""

    rate: float
    burst_rate: float
    start: float
    seconds: float

    def describe(self) -> str:
        return (
            f"Poisson {self.rate:g}/s, {self.burst_rate:g}/s from {self.start:g} s to "
            f"{self.start + self.seconds:g} s"
        )


@dataclass(frozen=True)
class Row:
    """One workload of the matrix and its targets (ratios gateway ÷ round robin)."""

    name: str
    about: str
    box: str
    workload: WorkloadConfig
    concurrency: int | None = None
    bursty: Bursty | None = None
    min_throughput: float = 1.0
    max_ttft_p50: float = 1.05
    # (row name, least fraction of that row's throughput ratio this row's must reach)
    relative_to: tuple[str, float] | None = None

    def pacing(self) -> str:
        return f"concurrency {self.concurrency}" if self.bursty is None else self.bursty.describe()


def rows(quick: bool = False) -> list[Row]:
    """The matrix; ``quick``: about a quarter of the requests (a smoke test of the whole thing)."""

    def n(requests: int) -> int:
        return max(16, requests // 4) if quick else requests

    def prefix(groups: int, requests: int) -> WorkloadConfig:
        return WorkloadConfig(
            workload=Workload.SHARED_PREFIX, models=[GEMMA], requests=n(requests), groups=groups,
            prompts_per_group=16, system_prompt_len=2000, question_len=32, max_tokens=16, seed=3,
        )  # fmt: skip

    cache_bound = prefix(16, 320)
    burst = Bursty(rate=8, burst_rate=40, start=3, seconds=4) if not quick else Bursty(8, 40, 1, 1.5)
    return [
        Row("random-mixed", "random prompts, two models (one pool each)", "mixed",
            WorkloadConfig(models=[GEMMA, PHI], requests=n(240), max_tokens=32, seed=1), concurrency=16),
        Row("prefix-fits", "4 groups x 2,000-token system prompt: fits in every pod's cache", "cache",
            prefix(4, 240), concurrency=16),
        Row("prefix-exceeds", "16 groups x 2,000 tokens: more than one pod's cache (cache-bound)", "cache",
            cache_bound, concurrency=16, min_throughput=3.0, max_ttft_p50=0.1),
        Row("long-prompt", "50,000-token prompts (~200 KB bodies)", "long",
            WorkloadConfig(workload=Workload.LONG_PROMPT, models=[GEMMA], requests=n(48), prompt_len=50_000,
                           max_tokens=16, seed=4), concurrency=8),
        Row("bursty", "Poisson arrivals, a burst above the pods' capacity", "long",
            WorkloadConfig(models=[GEMMA], requests=n(208), max_tokens=32, seed=5), bursty=burst),
        Row("heterogeneous", "one pod with half the slots, twice as slow", "hetero",
            WorkloadConfig(models=[GEMMA], requests=n(300), max_tokens=32, seed=6), concurrency=32,
            min_throughput=1.3),
        Row("prefix-exceeds-2epp", "the cache-bound row with 2 EPP replicas", "cache-2epp",
            cache_bound, concurrency=16, min_throughput=3.0, max_ttft_p50=0.1,
            relative_to=("prefix-exceeds", 0.9)),
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
class RowResult:
    row: Row
    gateway: RunResult
    round_robin: RunResult
    checks: list[Check] = field(default_factory=list)

    @property
    def summaries(self) -> tuple[RunSummary, RunSummary]:
        return summarize(self.gateway), summarize(self.round_robin)

    @property
    def throughput(self) -> float | None:
        gateway, rr = self.summaries
        return ratio(gateway.overall.requests_per_s, rr.overall.requests_per_s)

    @property
    def ttft_p50(self) -> float | None:
        gateway, rr = self.summaries
        return ratio(gateway.overall.ttft.p50, rr.overall.ttft.p50)


def judge(results: Sequence[RowResult]) -> None:
    """Fill every row's checks: its own targets, and those relative to another row's ratio."""
    by_name = {r.row.name: r for r in results}
    for result in results:
        row = result.row
        gateway, _ = result.summaries
        result.checks = [
            Check("throughput", result.throughput, row.min_throughput, at_least=True),
            Check("TTFT p50", result.ttft_p50, row.max_ttft_p50, at_least=False),
            Check("gateway accuracy", gateway.overall.accuracy, 1.0, at_least=True),
        ]
        if row.relative_to is not None:
            other_name, fraction = row.relative_to
            other = by_name.get(other_name)
            relative = ratio(result.throughput, other.throughput) if other is not None else None
            what = f"throughput ratio / {other_name}'s"
            result.checks.append(Check(what, relative, fraction, at_least=True))


async def run_row(row: Row, gateway_url: str, round_robin_url: str, *, progress: bool = False) -> RowResult:
    """The row's workload against the gateway, then the same requests (other salt) against round robin."""
    runs = []
    for label, url in (("gateway", gateway_url), ("round-robin", round_robin_url)):
        workload = row.workload.model_copy(update={"prefix_salt": f"{label} "})
        specs = generate(workload)
        arrivals = None
        if row.bursty is not None:
            b = row.bursty
            arrivals = bursty_arrivals(b.rate, b.burst_rate, b.start, b.seconds, len(specs), workload.seed)
        runs.append(
            await run(url, specs, concurrency=row.concurrency, arrivals=arrivals, stream=True,
                      request_timeout=120.0, label=label, progress=progress,
                      model_header=label == "round-robin")
        )  # fmt: skip
    return RowResult(row, runs[0], runs[1])


async def run_matrix(
    selected: Sequence[Row], *, time_scale: float = 1.0, progress: bool = False,
    out: Callable[[str], None] = print,
) -> list[RowResult]:
    """Every row, box by box (each box started once, with its round-robin twin, then stopped)."""
    results: dict[str, RowResult] = {}
    for box_name in dict.fromkeys(r.box for r in selected):
        spec = BOXES[box_name]
        started = time.monotonic()
        async with OneBox(spec.topology, round_robin=True, time_scale=time_scale,
                          epp_replicas=spec.epp_replicas) as box:  # fmt: skip
            out(f"box {box_name} ({spec.about}) up in {time.monotonic() - started:.1f} s")
            for row in (r for r in selected if r.box == box_name):
                row_started = time.monotonic()
                result = await run_row(row, box.gateway_url, box.round_robin_url, progress=progress)
                results[row.name] = result
                out(f"  {row.name}: {time.monotonic() - row_started:.1f} s")
    ordered = [results[r.name] for r in selected]
    judge(ordered)
    return ordered


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


TABLE_COLUMNS = (
    "row", "gw req/s", "RR req/s", "req/s ratio", "target", "gw TTFT p50 ms", "RR TTFT p50 ms",
    "TTFT ratio", "target", "gw accuracy", "verdict",
)  # fmt: skip


def table_rows(results: Sequence[RowResult]) -> list[list[str]]:
    lines = []
    for r in results:
        gateway, rr = r.summaries
        throughput, ttft = r.checks[0], r.checks[1]
        extra = [c for c in r.checks[2:] if c.what != "gateway accuracy"]
        verdict = "PASS" if all(c.passed for c in r.checks) else "FAIL"
        lines.append([
            r.row.name,
            f"{gateway.overall.requests_per_s:.1f}", f"{rr.overall.requests_per_s:.1f}",
            f"{_x(r.throughput)} {'ok' if throughput.passed else 'FAIL'}", f">= {throughput.target:g}x",
            _ms(gateway.overall.ttft.p50), _ms(rr.overall.ttft.p50),
            f"{_x(r.ttft_p50)} {'ok' if ttft.passed else 'FAIL'}", f"<= {ttft.target:g}x",
            f"{gateway.overall.accuracy * 100:.1f}%",
            verdict + "".join(f"; {c}" for c in extra),
        ])  # fmt: skip
    return lines


def format_matrix(results: Sequence[RowResult]) -> str:
    grid = [list(TABLE_COLUMNS), *table_rows(results)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(TABLE_COLUMNS))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in grid]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def to_dict(results: Sequence[RowResult], settings: dict[str, Any]) -> dict[str, Any]:
    rows_out = []
    for r in results:
        gateway, rr = r.summaries
        rows_out.append({
            "name": r.row.name, "about": r.row.about, "box": r.row.box, "box_about": BOXES[r.row.box].about
            if r.row.box in BOXES else "", "pacing": r.row.pacing(),
            "workload": r.row.workload.model_dump(mode="json"),
            "ratios": {"requests_per_s": r.throughput, "ttft_p50": r.ttft_p50},
            "checks": [{"what": c.what, "value": c.value, "target": c.target,
                        "at_least": c.at_least, "passed": c.passed} for c in r.checks],
            "gateway": gateway.model_dump(mode="json"), "round_robin": rr.model_dump(mode="json"),
        })  # fmt: skip
    return {
        "title": "Workload matrix: gateway vs round robin over the same pods",
        "settings": settings,
        "passed": all(c.passed for r in results for c in r.checks),
        "rows": rows_out,
    }


def _ratio_plot(results: Sequence[RowResult]) -> str:
    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = list(range(len(results)))
    throughput = [r.throughput or 0.0 for r in results]
    ttft = [r.ttft_p50 or 0.0 for r in results]
    ax.bar([x - 0.2 for x in xs], throughput, width=0.4, label="req/s ratio (higher is better)")
    ax.bar([x + 0.2 for x in xs], ttft, width=0.4, label="TTFT p50 ratio (lower is better)")
    for x, r in zip(xs, results, strict=True):
        ax.hlines(r.row.min_throughput, x - 0.4, x, colors="black", linestyles="dashed")
        ax.hlines(r.row.max_ttft_p50, x, x + 0.4, colors="red", linestyles="dotted")
    ax.axhline(1.0, color="grey", linewidth=0.6)
    ax.set_yscale("log")
    ax.set_xticks(xs, [r.row.name for r in results], rotation=20, fontsize=8)
    ax.set_ylabel("gateway / round robin")
    ax.set_title("Ratios per row (dashes: targets)")
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
        gateway, rr = r.summaries
        report = Report(title=r.row.name, settings={}, runs=[r.gateway, r.round_robin])
        plot = cdf_plot(report, "ttft", f"{r.row.name}: time to first token")
        pods = "; ".join(
            f"{s.label}: " + ", ".join(f"{pod} {count}" for pod, count in s.overall.pods.items())
            for s in (gateway, rr)
        )
        checks = "".join(f"<li>{esc(str(c))}</li>" for c in r.checks)
        sections.append(
            f"<h3>{esc(r.row.name)}</h3><p>{esc(r.row.about)}; box {esc(r.row.box)}; {esc(r.row.pacing())}; "
            f"{r.row.workload.requests} requests per run</p><ul>{checks}</ul><p>answered by: {esc(pods)}</p>"
            + (f'<img alt="TTFT CDF" src="data:image/png;base64,{plot}">' if plot else "")
        )
    css = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px}"
        "th{background:#f3f3f3}img{display:block;margin:1em 0}"
    )
    title = "Workload matrix: gateway vs round robin over the same pods"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{css}</style></head>"
        f"<body><h1>{title}</h1><table><tr>{head}</tr>{body}</table>"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench matrix", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the requests (a smoke test)")
    parser.add_argument("--rows", help="comma-separated row names (default: all, the elastic rows "
                        f"{', '.join(elastic.ROWS)} included; the long '{SCALE_ROW}' row and "
                        f"{', '.join(flush.ROWS)} only when named)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulator delay multiplier")
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"))
    parser.add_argument("--progress", action="store_true", help="progress bars")
    return parser


def _extra_report(
    name: str, text: str, rows: Sequence[object], settings: dict[str, Any], directory: Path
) -> None:
    """Print the table of rows that are not gateway-vs-round-robin ones, and write their JSON."""
    print()
    print(text)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    print(f"\nreport: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    selected = rows(args.quick)
    extra = list(elastic.ROWS)  # the elastic rows (bench.elastic): their own boxes and figures
    scale = False
    flushes: list[str] = []  # the cache-flush row (bench.flush), only when named
    if args.rows:
        wanted = [name.strip() for name in args.rows.split(",") if name.strip()]
        scale = SCALE_ROW in wanted
        unknown = sorted(set(wanted) - {r.name for r in selected} - set(elastic.ROWS) - set(flush.ROWS)
                         - {SCALE_ROW})
        if unknown:
            print(f"bench matrix: unknown rows {', '.join(unknown)}; rows: "
                  f"{', '.join([*(r.name for r in selected), *elastic.ROWS])}", file=sys.stderr)  # fmt: skip
            return 2
        selected = [r for r in selected if r.name in wanted]
        extra = [name for name in elastic.ROWS if name in wanted]
        flushes = [name for name in flush.ROWS if name in wanted]
    started = time.monotonic()
    results = []
    if selected:
        results = asyncio.run(run_matrix(selected, time_scale=args.time_scale, progress=args.progress))
    extras = asyncio.run(elastic.run_elastic(extra, quick=args.quick, time_scale=args.time_scale))
    scaled = asyncio.run(run_scale(QUICK if args.quick else ScaleSettings())) if scale else None
    flushed = asyncio.run(flush.run_flush(flushes, quick=args.quick, time_scale=args.time_scale))
    settings = {
        "quick": args.quick, "time_scale": args.time_scale, "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0], "seconds": round(time.monotonic() - started, 1),
    }  # fmt: skip
    passed = (all(c.passed for r in results for c in r.checks) and all(e.passed for e in extras)
              and all(f.passed for f in flushed))
    if scaled is not None:
        print()
        print(format_scale(scaled))
        passed = passed and scaled.passed
    if results:
        print()
        print(format_matrix(results))
        json_path, html_path = write_reports(results, settings, args.reports_dir)
        print(f"\nreports: {json_path}  {html_path}")
    where = args.reports_dir
    if extras:
        _extra_report("elastic", elastic.format_elastic(extras), elastic.to_dict(extras), settings, where)
    if flushed:
        _extra_report("flush", flush.format_flush(flushed), flush.to_dict(flushed), settings, where)
    print(f"matrix took {settings['seconds']} s on {os.cpu_count()} CPUs (1-min load average at the end "
          f"{settings['load_average']:.1f}: other work on this machine moves the figures)")  # fmt: skip
    return 0 if passed else 1
