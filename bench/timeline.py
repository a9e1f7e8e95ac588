"""``python -m bench.timeline``: where the picker put each request, against how busy the pods were.

Runs one of the matrix's rows (``--row``: random-mixed, two models with two pods each, by default;
long-prompt, one model on four pods; bursty, its closed loop on the same four pods; or prefix-fits,
one model on four pods, four shared prompts)
against the gateway and against round robin over the same pods, and rebuilds every pod's concurrency
over time from the client's records (each request is on its pod
from the moment it is sent until its last byte; the pod is the one named by the answer's
``x-inference-pod`` header). For each run it prints:

* **busier picks**: the share of requests sent to a pod with more requests on it than the mean of its
  siblings (the other pods of the same model) at that moment; ties are counted apart;
* **pick gap**: the mean of (requests on the picked pod - the mean of its siblings') when sent;
* **imbalance**: the time-weighted mean of (the busiest pod - the least busy) per model;
* **TTFT p50** (and mean), the **E2E mean** (a closed loop's rate is its concurrency over that), and
  the mean concurrency a request found on its pod;
* for the gateway, the EPPs' CPU per request (user + system, from ``/proc``, over the run);
* **pods**: what the pods themselves measured over the run (their histograms, read before and after
  it): the mean time to first token from a request's arrival (its wait for a slot included), and
  the decode lag, their end-to-end time less that and their inter-token delays (the simulator
  records its modelled delays there, so a simulated pod slowed by a busy machine shows it as lag;
  vLLM records the delays it measured, and its lag is about 0 by construction);

and at the end, both sides' TTFT p50 and mean by the number of requests a request found on its pod
(rounds pooled): a gap at equal occupancy is a cost per request, the rest of the overall gap is
placement.
``--phases`` also prints, per run, where Envoy saw the requests' time go (``onebox.envoy.phases``):
to the pod (the BBR's and the EPP's request calls), the pod's time to its first byte, the EPP's
response-headers call, each call's p50 and mean; round robin's to-the-pod is Envoy alone.

A picker that knows the pods' loads picks the less busy pod (a negative gap); round robin alternates
blindly (a gap near 0). ``--csv DIR`` writes each run's per-request records for plotting.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import csv
import itertools
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import aiohttp

from bench.client import RequestResult, RunResult, run
from bench.matrix import BOXES, parse_epp_setting, rows
from bench.scale import group_cpu_seconds
from bench.stats import sample_totals
from bench.workloads import generate
from onebox.box import OneBox
from onebox.envoy import ResponseMode
from onebox.envoy.phases import RequestPhases, phase_summary, read_phases, wait_for_served


@dataclass(frozen=True)
class Placement:
    """One answered request: its pod, the model's pods, and when it was on its pod."""

    pod: str
    model: str
    start: float
    end: float
    ttft: float | None


@dataclass(frozen=True)
class PickStats:
    label: str
    requests: int
    busier: float
    ties: float
    gap: float
    found: float
    imbalance: float
    ttft_p50: float | None
    # TTFTs (s) by the number of requests each found on its pod when sent.
    ttft_by_found: dict[int, list[float]]
    ttft_mean: float | None = None
    e2e_mean: float | None = None

    def line(self) -> str:
        ttft = "-" if self.ttft_p50 is None else f"{self.ttft_p50 * 1000:.0f} ms"
        if self.ttft_mean is not None:
            ttft += f" (mean {self.ttft_mean * 1000:.1f})"
        e2e = "" if self.e2e_mean is None else f"  E2E mean {self.e2e_mean * 1000:.1f} ms"
        return (
            f"{self.label:<12} n={self.requests:<4} busier picks {self.busier * 100:5.1f}%  "
            f"ties {self.ties * 100:5.1f}%  pick gap {self.gap:+.2f}  found on pod {self.found:.2f}  "
            f"imbalance {self.imbalance:.2f}  TTFT p50 {ttft}{e2e}"
        )


def placements(results: Sequence[RequestResult]) -> list[Placement]:
    out = []
    for r in results:
        pod = r.final.pod
        if not r.ok or pod is None or r.e2e is None:
            continue
        out.append(Placement(pod, r.requested_model, r.start, r.start + r.e2e, r.ttft))
    return out


class _Occupancy:
    """A pod's requests as sorted starts and ends: how many are on it at any instant."""

    def __init__(self, spans: Sequence[Placement]) -> None:
        self.starts = sorted(p.start for p in spans)
        self.ends = sorted(p.end for p in spans)

    def at(self, t: float) -> int:
        """Requests on the pod at ``t`` (one that starts exactly at ``t`` is not counted)."""
        return bisect.bisect_left(self.starts, t) - bisect.bisect_right(self.ends, t)


def _time_weighted_gap(pods: Sequence[_Occupancy]) -> float:
    """The time-weighted mean of (the busiest pod's requests - the least busy pod's)."""
    events = sorted({t for pod in pods for t in (*pod.starts, *pod.ends)})
    total = weighted = 0.0
    for t0, t1 in itertools.pairwise(events):
        mid = (t0 + t1) / 2
        counts = [pod.at(mid) for pod in pods]
        weighted += (max(counts) - min(counts)) * (t1 - t0)
        total += t1 - t0
    return weighted / total if total else 0.0


def pick_stats(label: str, result: RunResult) -> PickStats:
    done = placements(result.results)
    by_pod: dict[str, list[Placement]] = defaultdict(list)
    pods_of: dict[str, set[str]] = defaultdict(set)
    for p in done:
        by_pod[p.pod].append(p)
        pods_of[p.model].add(p.pod)
    occupancy = {pod: _Occupancy(spans) for pod, spans in by_pod.items()}
    busier = ties = 0
    gaps: list[float] = []
    found: list[int] = []
    ttft_by_found: dict[int, list[float]] = defaultdict(list)
    for p in done:
        siblings = [s for s in pods_of[p.model] if s != p.pod]
        mine = occupancy[p.pod].at(p.start)
        found.append(mine)
        if p.ttft is not None:
            ttft_by_found[mine].append(p.ttft)
        if not siblings:
            continue
        other = statistics.fmean(occupancy[s].at(p.start) for s in siblings)
        gaps.append(mine - other)
        busier += mine > other
        ties += mine == other
    imbalances = []
    for pods in pods_of.values():
        if len(pods) >= 2:
            imbalances.append(_time_weighted_gap([occupancy[pod] for pod in sorted(pods)]))
    ttfts = sorted(p.ttft for p in done if p.ttft is not None)
    n = max(1, len(gaps))
    return PickStats(
        label,
        len(done),
        busier / n,
        ties / n,
        statistics.fmean(gaps) if gaps else 0.0,
        statistics.fmean(found) if found else 0.0,
        statistics.fmean(imbalances) if imbalances else 0.0,
        statistics.median(ttfts) if ttfts else None,
        dict(ttft_by_found),
        statistics.fmean(ttfts) if ttfts else None,
        statistics.fmean(p.end - p.start for p in done) if done else None,
    )


SIDES = ("gateway", "round-robin")


def ttft_by_occupancy(stats: Sequence[PickStats]) -> list[str]:
    """TTFT p50 (and mean) by the requests a request found on its pod, gateway against round robin
    (rounds pooled).

    At equal occupancy the pods are as busy on both sides, so a gap there is a cost per request (the
    gateway's hops); the rest of the gap in the overall p50 comes from where the requests were put.
    The mean shows the waits: a request sent to a pod whose slots are all taken waits for the first
    of them to end, briefly where that pod's oldest answer was about to end, long where it had just
    begun.
    """
    pooled: dict[str, dict[int, list[float]]] = {side: defaultdict(list) for side in SIDES}
    for s in stats:
        for found, ttfts in s.ttft_by_found.items():
            pooled[s.label][found].extend(ttfts)
    lines = []
    for found in sorted(set().union(*pooled.values())):
        p50: dict[str, float] = {}
        cells = []
        for side in SIDES:
            ttfts = pooled[side].get(found, [])
            if ttfts:
                p50[side] = statistics.median(ttfts)
                mean = statistics.fmean(ttfts)
                cells.append(f"{p50[side] * 1000:6.1f} ms, mean {mean * 1000:6.1f} (n={len(ttfts)})")
            else:
                cells.append(f"{'-':>6}")
        gap = f"  gap {(p50['gateway'] - p50['round-robin']) * 1000:+.1f} ms" if len(p50) == 2 else ""
        lines.append(f"found {found:2d} on the pod: gateway {cells[0]:<30}  round robin {cells[1]:<30}{gap}")
    return lines


def write_csv(path: Path, result: RunResult) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "model", "pod", "start_s", "end_s", "ttft_s"])
        for r in result.results:
            if r.ok and r.e2e is not None:
                w.writerow([r.index, r.requested_model, r.final.pod, f"{r.start:.6f}",
                            f"{r.start + r.e2e:.6f}", "" if r.ttft is None else f"{r.ttft:.6f}"])  # fmt: skip


ROWS = ("random-mixed", "long-prompt", "bursty", "prefix-fits")

# The pods' own histograms (vLLM's names): (sum, count) of each, summed over the pods.
_POD_HISTOGRAMS = ("vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds",
                   "vllm:inter_token_latency_seconds")  # fmt: skip


Totals = dict[str, tuple[float, float]]


def pod_totals(pages: Sequence[str]) -> Totals:
    """(sum, count) of each of ``_POD_HISTOGRAMS`` over the pods' ``/metrics`` pages."""
    samples = [sample_totals(page) for page in pages]
    return {name: (sum(s.get(f"{name}_sum", 0.0) for s in samples),
                   sum(s.get(f"{name}_count", 0.0) for s in samples))
            for name in _POD_HISTOGRAMS}  # fmt: skip


def pods_line(label: str, before: Totals, after: Totals) -> str:
    """The pods' own view of one run, from their histograms before and after it."""
    e2e, ttft, itl = ((after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in _POD_HISTOGRAMS)
    answered, first_tokens = e2e[1], ttft[1]
    if not answered or not first_tokens:
        return f"{label:<12} pods: no answer ended"
    mean = ttft[0] / first_tokens * 1000
    text = f"{label:<12} pods: TTFT mean {mean:.1f} ms from arrival (slot wait included)"
    if first_tokens != answered:  # some ended before their first token: their time has no split
        return text + f"; {answered - first_tokens:.0f} of {answered:.0f} answers cut short, no decode lag"
    lag = (e2e[0] - ttft[0] - itl[0]) / answered
    return text + f", decode lag {lag * 1000:.2f} ms/request over {answered:.0f} answers"


async def read_pods(session: aiohttp.ClientSession, addresses: Sequence[str]) -> Totals:
    pages = []
    for address in addresses:
        async with session.get(f"http://{address}/metrics") as response:
            response.raise_for_status()
            pages.append(await response.text())
    return pod_totals(pages)


# Seconds to let the box's readiness checks reach its Envoys' phase logs (flushed every 100 ms)
# before a run's lines are read.
_FLUSHED = 0.5


def phase_lines(label: str, requests: Sequence[RequestPhases]) -> list[str]:
    """The run's phases as Envoy timed them: p50 and mean of each, in ms."""
    figures = phase_summary(requests)
    if not figures:
        return [f"{label:<12} phases: none logged"]
    cells = [f"{f.phase} {f.p50 * 1000:.2f}/{f.mean * 1000:.2f}" for f in figures if f.phase != "total"]
    return [f"{label:<12} phases p50/mean ms: " + ", ".join(cells)]


async def measure(
    *, time_scale: float, requests: int | None, rounds: int, row_name: str = "random-mixed",
    epp_settings: dict[str, Any] | None = None, phases: Path | None = None,
    response_mode: ResponseMode = "streamed",
) -> list[tuple[str, RunResult, PickStats]]:  # fmt: skip
    """``rounds`` x (gateway, round robin) runs of a matrix row on one box, each printed as it ends;
    with ``phases`` (a directory for the Envoys' phase logs), each run's phases too; ``response_mode``:
    how the gateway's Envoy shows the EPP the answers (as ``bench matrix --response-mode``)."""
    row = next(r for r in rows() if r.name == row_name)
    workload = row.workload if requests is None else row.workload.model_copy(update={"requests": requests})
    runs = []
    offsets = {"gateway": 0, "round-robin": 0}
    box = OneBox(BOXES[row.box].topology, round_robin=True, time_scale=time_scale, epp_settings=epp_settings,
                 phase_log_dir=phases, response_mode=response_mode)
    async with box, aiohttp.ClientSession() as session:
        pods = [pod.address for pod in box.pods]
        if phases is not None:  # the box's own readiness checks are not a run's
            await asyncio.sleep(_FLUSHED)
            for label, envoy in (("gateway", "envoy"), ("round-robin", "envoy-round-robin")):
                _, offsets[label] = read_phases(box.phase_log(envoy))
        for i in range(rounds):
            for label, url in (("gateway", box.gateway_url), ("round-robin", box.round_robin_url)):
                specs = generate(workload.model_copy(update={"prefix_salt": f"{label}{i} "}))
                epps = [c.pid for c in box.children if c.name.startswith("epp")]
                cpu = sum(group_cpu_seconds(pid) for pid in epps)
                pods_before = await read_pods(session, pods)
                result = await run(url, specs, concurrency=row.concurrency, stream=True,
                                   request_timeout=120.0, label=label,
                                   model_header=label == "round-robin")  # fmt: skip
                cpu = sum(group_cpu_seconds(pid) for pid in epps) - cpu
                pods_after = await read_pods(session, pods)
                stats = pick_stats(label, result)
                line = stats.line()
                if label == "gateway":
                    line += f"  EPP CPU {cpu / max(1, len(result.results)) * 1000:.2f} ms/request"
                print(line, flush=True)
                print(pods_line(label, pods_before, pods_after), flush=True)
                if phases is not None:
                    envoy = "envoy" if label == "gateway" else "envoy-round-robin"
                    answered = sum(1 for r in result.results if r.ok)
                    logged, offsets[label] = await wait_for_served(
                        box.phase_log(envoy), offsets[label], answered
                    )
                    for text in phase_lines(label, logged):
                        print(text, flush=True)
                runs.append((f"{label}-{i}", result, stats))
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__.splitlines()[0])
    p.add_argument("--row", choices=ROWS, default="random-mixed")
    p.add_argument("--epp-setting", action="append", default=[], type=parse_epp_setting,
                   metavar="NAME=VALUE", help="an EPP setting (repeatable), as bench matrix takes it")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--requests", type=int, help="requests per run (default: the row's)")
    p.add_argument("--rounds", type=int, default=2, help="alternating gateway / round-robin runs")
    p.add_argument("--csv", type=Path, help="write each run's per-request records here")
    p.add_argument("--phases", action="store_true",
                   help="log each request's phases in both Envoys and print them per run")
    p.add_argument("--response-mode", choices=get_args(ResponseMode), default="streamed",
                   help="how the gateway's Envoy shows the EPP the answers, as bench matrix takes it")
    args = p.parse_args(argv)
    settings = dict(args.epp_setting)
    about = f", EPP settings {settings}" if settings else ""
    if args.response_mode != "streamed":
        about += f", responses {args.response_mode}"
    print(f"{args.row}, time scale {args.time_scale:g}, {os.cpu_count()} CPUs{about}", flush=True)
    with tempfile.TemporaryDirectory(prefix="timeline-phases-") as logs:
        runs = asyncio.run(measure(time_scale=args.time_scale, requests=args.requests, rounds=args.rounds,
                                   row_name=args.row, epp_settings=settings or None,
                                   phases=Path(logs) if args.phases else None,
                                   response_mode=args.response_mode))  # fmt: skip
    if args.csv is not None:
        args.csv.mkdir(parents=True, exist_ok=True)
        for name, result, _ in runs:
            write_csv(args.csv / f"{name}.csv", result)
    print("TTFT p50 by the requests found on the picked pod when sent:")
    for line in ttft_by_occupancy([stats for _, _, stats in runs]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
