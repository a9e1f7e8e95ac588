"""``python -m bench scale``: the EPP at 100 pods, beside the upstream picker's published sizing.

One box (``onebox``) with one InferencePool of ``--pods`` simulated pods, served by a few
``vllmsim --pods`` processes (``one_process: true``, ``sim_processes``), one EPP scraping each
pod's ``/metrics`` every 50 ms (its default, upstream's too), and Envoy in front (unified-pool
mode: no BBR). The simulator answers at once (time-scale 0), so the EPP, not the model, is what
is measured. Two phases:

1. **idle**: no traffic; the EPP's CPU from ``/proc/PID/stat`` (user + system) over ``--idle-seconds``,
   and the scrapes it made meanwhile (``epp_metrics_scrapes_total``) against the ``pods / interval``
   it should make;
2. **load**: ``--concurrency`` clients in a closed loop send ``POST /v1/completions`` with a
   ``--prompt-kb`` prompt (400 KB, about 100k tokens at 4 characters a token; each prompt begins
   differently) through Envoy for ``--load-seconds``. Reported: requests/s completed, the EPP's cores,
   its CPU per request (cores x seconds / requests, idle scraping included), and requests/s per EPP
   core. The CPU of Envoy, the simulator and the load generator is printed beside it: on a small
   machine one of them, not the EPP, may be what limits the rate.

The upstream figures (llm-d-router's container sizing guide, ``docs/operations.md``, also at
https://llm-d.ai/docs/resources/operations/router): its Go EPP needs 35-46 CPU cores at peak for about
99 requests/s with 100 simulated model-server pods and agentic prompts of about 100k input / 1k output
tokens (its rule of thumb: 0.5-1.0 core per request/s), and about 7.5 cores idle from scraping 100
pods every 50 ms. Targets here: idle <= 0.25 core; >= 10x upstream's requests/s per core (99 / 40
is about 2.5, so >= 25).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from onebox.box import OneBox
from onebox.topology import ModelSpec, SimOptions, Topology

MODEL = "scale/100k-context"
UPSTREAM_IDLE_CORES = 7.5
UPSTREAM_RATE = 99.0
UPSTREAM_PEAK_CORES = (35.0, 46.0)
UPSTREAM_RATE_PER_CORE = UPSTREAM_RATE / (sum(UPSTREAM_PEAK_CORES) / 2)  # about 2.4-2.5
UPSTREAM_WORKLOAD = (
    "llm-d-router's Go EPP (its operations guide): 35-46 cores at peak for ~99 req/s, 100 simulated "
    "pods, ~100k input / 1k output tokens; ~7.5 cores idle scraping 100 pods every 50 ms"
)
IDLE_TARGET_CORES = 0.25
RATE_PER_CORE_TARGET = 10 * UPSTREAM_RATE_PER_CORE
_TICKS = os.sysconf("SC_CLK_TCK")
_SCRAPES = re.compile(r"^epp_metrics_scrapes_total (\S+)$", re.MULTILINE)
Output = Callable[[str], None]


@dataclass(frozen=True)
class ScaleSettings:
    pods: int = 100
    sim_processes: int = 4
    prompt_kb: int = 400
    output_tokens: int = 1000
    concurrency: int = 4
    idle_seconds: float = 10.0
    load_seconds: float = 20.0
    settle_seconds: float = 3.0


QUICK = ScaleSettings(pods=10, sim_processes=2, prompt_kb=40, output_tokens=16, concurrency=4,
                      idle_seconds=2.0, load_seconds=3.0, settle_seconds=1.0)  # fmt: skip


@dataclass
class ScaleResult:
    settings: ScaleSettings
    interval_s: float
    idle_cores: float
    idle_scrapes_per_s: float
    requests: int
    failed: dict[str, int]
    load_seconds: float
    epp_load_cores: float
    load_scrapes_per_s: float = 0.0
    others_cores: dict[str, float] = field(default_factory=dict)  # envoy, simulator, load generator
    load_average: float = 0.0
    cpus: int = 0

    @property
    def wanted_scrapes_per_s(self) -> float:
        return self.settings.pods / self.interval_s

    @property
    def rate(self) -> float:
        return self.requests / self.load_seconds if self.load_seconds else 0.0

    @property
    def cpu_per_request(self) -> float | None:
        """EPP cores x seconds per request under load (its scraping included)."""
        return self.epp_load_cores * self.load_seconds / self.requests if self.requests else None

    @property
    def rate_per_core(self) -> float | None:
        return self.rate / self.epp_load_cores if self.epp_load_cores > 0 else None

    @property
    def passed(self) -> bool:
        per_core = self.rate_per_core
        return (
            not self.failed
            and self.idle_cores <= IDLE_TARGET_CORES
            and per_core is not None
            and per_core >= RATE_PER_CORE_TARGET
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "settings": asdict(self.settings), "interval_s": self.interval_s, "idle_cores": self.idle_cores,
            "idle_scrapes_per_s": self.idle_scrapes_per_s, "wanted_scrapes_per_s": self.wanted_scrapes_per_s,
            "requests": self.requests, "failed": self.failed, "rate": self.rate,
            "epp_load_cores": self.epp_load_cores, "load_scrapes_per_s": self.load_scrapes_per_s,
            "cpu_per_request": self.cpu_per_request,
            "rate_per_core": self.rate_per_core, "others_cores": self.others_cores,
            "load_average": self.load_average, "cpus": self.cpus, "upstream": UPSTREAM_WORKLOAD,
            "passed": self.passed,
        }  # fmt: skip


def scale_topology(settings: ScaleSettings) -> Topology:
    """One model, ``pods`` replicas from ``sim_processes`` simulator processes, room for the prompts."""
    tokens = settings.prompt_kb * 1024 // 4 + settings.output_tokens + 1024
    blocks = -(-tokens // 16) * 2
    sim = SimOptions(kv_cache_blocks=blocks, max_model_len=tokens, max_num_seqs=64)
    model = ModelSpec(
        name="big", served_name=MODEL, replicas=settings.pods, one_process=True,
        sim_processes=settings.sim_processes, sim=sim,
    )  # fmt: skip
    return Topology(name="scale", models=[model])


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid`` (a child and what
    it started), from ``/proc/PID/stat``."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # it ended meanwhile
        fields = stat[stat.rfind(b")") + 2 :].split()
        # After the command: state(0) ppid(1) pgrp(2) ... utime(11) stime(12)
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


async def _epp_scrapes(session: aiohttp.ClientSession, metrics_url: str) -> float:
    async with session.get(metrics_url) as response:
        text = await response.text()
    match = _SCRAPES.search(text)
    if match is None:
        raise RuntimeError(f"{metrics_url} has no epp_metrics_scrapes_total")
    return float(match.group(1))


def _bodies(settings: ScaleSettings) -> Callable[[int], bytes]:
    """Request ``i``'s body: a prompt of ``prompt_kb`` KB that begins with ``i`` (no two alike)."""
    filler = ("lorem ipsum dolor sit amet consectetur " * (settings.prompt_kb * 1024 // 38 + 1)).encode()
    filler = filler[: settings.prompt_kb * 1024]
    head = b'{"model": "' + MODEL.encode() + b'", "max_tokens": ' + str(settings.output_tokens).encode()
    head += b', "prompt": "'

    def body(i: int) -> bytes:
        return head + f"request {i}: ".encode() + filler + b'"}'

    return body


async def _load(
    url: str, settings: ScaleSettings, stop_at: float, body: Callable[[int], bytes]
) -> tuple[int, dict[str, int]]:
    """Closed loop until ``stop_at`` (loop time): requests answered 200, and the others by status
    (or error) with the first answer's text."""
    counter = iter(range(1 << 62))
    ok = 0
    failed: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=settings.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            nonlocal ok
            headers = {"Content-Type": "application/json"}
            while loop.time() < stop_at:
                try:
                    async with session.post(f"{url}/v1/completions", data=body(next(counter)),
                                            headers=headers) as response:  # fmt: skip
                        answer = await response.read()
                        if response.status == 200:
                            ok += 1
                            continue
                        what = f"HTTP {response.status}"
                        if what not in failed:
                            what += f" ({answer[:120].decode(errors='replace')})"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    what = type(exc).__name__
                failed[what] = failed.get(what, 0) + 1

        await asyncio.gather(*(worker() for _ in range(settings.concurrency)))
    return ok, failed


async def run_scale(settings: ScaleSettings, out: Output = print) -> ScaleResult:
    topology = scale_topology(settings)
    out(f"scale: starting {settings.pods} simulated pods ({settings.sim_processes} processes), EPP, Envoy")
    async with OneBox(topology, mode="unified-pool", time_scale=0.0, startup_timeout=120.0) as box:
        epp = box.epps["unified"][0].child
        sims = list({pod.child.pid: pod.child for pod in box.pods if pod.child is not None}.values())
        envoy = box.child("envoy")
        metrics_url = f"http://127.0.0.1:{epp.ports['metrics']}/metrics"
        interval = 0.05  # the EPP's default --metrics-interval, as the box runs it
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(settings.settle_seconds)
            scrapes0 = await _epp_scrapes(session, metrics_url)
            cpu0, t0 = group_cpu_seconds(epp.pid), time.monotonic()
            await asyncio.sleep(settings.idle_seconds)
            cpu1, t1 = group_cpu_seconds(epp.pid), time.monotonic()
            scrapes1 = await _epp_scrapes(session, metrics_url)
        idle_cores = (cpu1 - cpu0) / (t1 - t0)
        out(f"scale: idle {idle_cores:.3f} EPP cores, {(scrapes1 - scrapes0) / (t1 - t0):.0f} scrapes/s")

        body = _bodies(settings)
        groups = {"envoy": [envoy.pid], "simulator": [sim.pid for sim in sims]}
        async with aiohttp.ClientSession() as session:
            load_scrapes0 = await _epp_scrapes(session, metrics_url)
        before = {name: sum(map(group_cpu_seconds, pids)) for name, pids in groups.items()}
        epp0, own0, start = group_cpu_seconds(epp.pid), time.process_time(), time.monotonic()
        stop_at = asyncio.get_running_loop().time() + settings.load_seconds
        ok, failed = await _load(box.gateway_url, settings, stop_at, body)
        elapsed = time.monotonic() - start
        epp1, own1 = group_cpu_seconds(epp.pid), time.process_time()
        after = {name: sum(map(group_cpu_seconds, pids)) for name, pids in groups.items()}
        others = {name: (after[name] - before[name]) / elapsed for name in groups}
        others["load generator"] = (own1 - own0) / elapsed
        async with aiohttp.ClientSession() as session:
            load_scrapes = (await _epp_scrapes(session, metrics_url) - load_scrapes0) / elapsed
    return ScaleResult(
        settings=settings, interval_s=interval, idle_cores=idle_cores,
        idle_scrapes_per_s=(scrapes1 - scrapes0) / (t1 - t0), requests=ok, failed=failed,
        load_seconds=elapsed, epp_load_cores=(epp1 - epp0) / elapsed, load_scrapes_per_s=load_scrapes,
        others_cores=others,
        load_average=os.getloadavg()[0], cpus=os.cpu_count() or 0,
    )  # fmt: skip


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def format_scale(result: ScaleResult) -> str:
    s = result.settings
    busiest = max(result.others_cores.items(), key=lambda kv: kv[1], default=("", 0.0))
    per_core, per_request = result.rate_per_core, result.cpu_per_request
    failed = f"{sum(result.failed.values())} failed"
    if result.failed:
        failed += ": " + ", ".join(f"{what} x{count}" for what, count in result.failed.items())
    lines = [
        f"scale row: {s.pods} simulated pods in one InferencePool ({s.sim_processes} vllmsim processes), "
        "EPP scraping "
        f"every {result.interval_s * 1000:.0f} ms; {s.prompt_kb} KB prompts "
        f"(~{s.prompt_kb * 1024 // 4 // 1000}k tokens), {s.output_tokens} output tokens, "
        f"closed loop c={s.concurrency} through Envoy, simulator at time-scale 0",
        f"  EPP idle            {result.idle_cores:.3f} cores ({result.idle_scrapes_per_s:,.0f} scrapes/s of "
        f"{result.wanted_scrapes_per_s:,.0f} wanted)   target <= {IDLE_TARGET_CORES}   "
        f"upstream ~{UPSTREAM_IDLE_CORES} cores",
        f"  under load          {result.rate:,.1f} req/s ({result.requests} ok, {failed}), "
        f"EPP {result.epp_load_cores:.3f} cores ({result.load_scrapes_per_s:,.0f} scrapes/s meanwhile), "
        f"{_num(None if per_request is None else per_request * 1000)} ms EPP CPU per request",
        f"  req/s per EPP core  {_num(per_core, 1)}   target >= {RATE_PER_CORE_TARGET:.0f}   upstream "
        f"~{UPSTREAM_RATE_PER_CORE:.1f} ({UPSTREAM_RATE:.0f} req/s on {UPSTREAM_PEAK_CORES[0]:.0f}-"
        f"{UPSTREAM_PEAK_CORES[1]:.0f} cores)",
        "  other processes     " + ", ".join(f"{k} {v:.2f} cores" for k, v in result.others_cores.items())
        + f"; busiest: {busiest[0]}",
        f"  upstream workload   {UPSTREAM_WORKLOAD}",
        f"  machine             {result.cpus} CPUs, 1-min load average {result.load_average:.2f} at the end",
        f"  {'PASS' if result.passed else 'MISS'}",
    ]  # fmt: skip
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = ScaleSettings()
    p = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__.split("\n")[0])
    p.add_argument("--pods", type=int, default=d.pods)
    p.add_argument("--sim-processes", type=int, default=d.sim_processes, help="simulator processes")
    p.add_argument("--prompt-kb", type=int, default=d.prompt_kb)
    p.add_argument("--output-tokens", type=int, default=d.output_tokens)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--idle-seconds", type=float, default=d.idle_seconds)
    p.add_argument("--load-seconds", type=float, default=d.load_seconds)
    p.add_argument("--quick", action="store_true", help="10 pods, 40 KB prompts, seconds (a smoke test)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = QUICK if args.quick else ScaleSettings(
        pods=args.pods, sim_processes=args.sim_processes, prompt_kb=args.prompt_kb,
        output_tokens=args.output_tokens, concurrency=args.concurrency, idle_seconds=args.idle_seconds,
        load_seconds=args.load_seconds,
    )  # fmt: skip
    result = asyncio.run(run_scale(settings))
    print(format_scale(result))
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0 if result.passed else 1
