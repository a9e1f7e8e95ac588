"""The elastic rows of ``make bench-matrix``: fairness across tenants, a cold start from zero, a load step.

- ``fairness``: two tenants through API keys on two simulated pods with 4 slots each. Tenant
  ``heavy`` keeps many streams open (several times the pods' capacity); tenant ``light`` sends a
  request now and then. The light tenant's TTFT p50 under the flood ÷ its TTFT p50 alone, with the
  EPP's flow-control queue (``featureGates: [flowControl]``, ``saturationDetector.queueDepthThreshold:
  0``: requests wait in the EPP, dispatched round robin across tenants) and, in the same run, without
  it (each pod's own FIFO queue, what the gateway did before). Target <= 2x with the queue, 0 errors
  for the light tenant.
- ``cold-start``: a model at zero pods (``autoscaling.minReplicas: 0``); its first requests wait in
  the EPP while the box's scaler wakes a pod: their time to first token, and 0 failed.
- ``load-step``: an autoscaled model (1 to 4 pods) under a step from light to heavy load: completed
  requests/s, TTFT p50 and replicas per time window while it grows.

Figures are measured, never assumed; on a shared machine they move from run to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.client import RequestResult, Runner
from bench.stats import percentile
from bench.workloads import RequestSpec, WorkloadConfig, generate
from onebox.box import OneBox
from onebox.envoy.limits import GatewayTimeouts
from onebox.scaler import epp_config_document, with_flow_control
from onebox.topology import Autoscaling, ModelSpec, SimOptions, Topology

ROWS = ("fairness", "cold-start", "load-step")
MODEL = "google/gemma-2b-it"
FAIRNESS_TARGET = 2.0
Output = Callable[[str], None]
# The EPP holds queued requests for many seconds under the flood: Envoy's wait for its answer is longer.
_TIMEOUTS = GatewayTimeouts(ext_proc_message=120.0)


@dataclass(frozen=True)
class Figure:
    """One measured figure, with its target when it has one."""

    what: str
    value: float | None
    unit: str = ""
    target: float | None = None
    at_most: bool = True

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        if self.value is None:
            return False
        return self.value <= self.target if self.at_most else self.value >= self.target

    def __str__(self) -> str:
        if self.value is None:
            value = "n/a"
        else:
            value = f"{self.value:.2f}{self.unit}" if self.unit else f"{self.value:g}"
        if self.target is None:
            return f"{self.what} {value}"
        sign = "<=" if self.at_most else ">="
        return f"{self.what} {value} ({sign} {self.target:g}{self.unit}) {'PASS' if self.passed else 'FAIL'}"


@dataclass
class ElasticResult:
    """One row: its figures (some with targets) and lines that tell the story."""

    name: str
    about: str
    figures: list[Figure] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(f.passed is not False for f in self.figures)

    def say(self, out: Output, line: str) -> None:
        self.lines.append(line)
        out(f"  {line}")


def _p50_ttft(results: Sequence[RequestResult]) -> float | None:
    return percentile([r.ttft for r in results if r.ok and r.ttft is not None], 50)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _specs(requests: int, max_tokens: int, seed: int, model: str = MODEL) -> list[RequestSpec]:
    return generate(WorkloadConfig(models=[model], requests=requests, max_tokens=max_tokens, seed=seed))


async def _paced(runner: Runner, specs: Sequence[RequestSpec], every: float) -> list[RequestResult]:
    """One request every ``every`` s (each on its own, never more than the pacing allows)."""
    start = time.perf_counter()
    tasks = []
    for i, spec in enumerate(specs):
        delay = start + i * every - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(runner.send(spec, start)))
    return list(await asyncio.gather(*tasks))


@contextlib.asynccontextmanager
async def _flood(
    runner: Runner, streams: int, specs: Sequence[RequestSpec], start: float | None = None
) -> AsyncIterator[list[RequestResult]]:
    """``streams`` clients that each send the next request as soon as the last one ended, until exit;
    request start times are from ``start`` (``time.perf_counter()``; default: now)."""
    results: list[RequestResult] = []
    stop = asyncio.Event()
    cycle = itertools.cycle(specs)
    start = time.perf_counter() if start is None else start

    async def client() -> None:
        while not stop.is_set():
            results.append(await runner.send(next(cycle), start))

    tasks = [asyncio.create_task(client()) for _ in range(streams)]
    try:
        yield results
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _keys_file(directory: Path) -> tuple[Path, dict[str, str]]:
    """Two fresh random keys, one per tenant (never printed)."""
    keys = {tenant: secrets.token_urlsafe(32) for tenant in ("heavy", "light")}
    path = directory / "api-keys.yaml"
    path.write_text(yaml.safe_dump([{"name": name, "key": key} for name, key in keys.items()]))
    path.chmod(0o600)
    return path, keys


@dataclass(frozen=True)
class FairnessSettings:
    streams: int = 64  # the heavy tenant's open streams: 8x the pods' 8 slots
    heavy_tokens: int = 32
    light_requests: int = 24
    light_every: float = 0.25  # seconds between the light tenant's requests
    warmup: float = 2.0  # seconds of flood before the light tenant measures

    @classmethod
    def quick(cls) -> FairnessSettings:
        return cls(streams=24, heavy_tokens=16, light_requests=8, light_every=0.2, warmup=1.0)

    def scaled(self, time_scale: float) -> FairnessSettings:
        """The same load shape on a model ``time_scale`` times slower: the light tenant's pace and the
        warm-up stretch with it, so its requests stay as few at a time (about one) as at scale 1."""
        if time_scale <= 1.0:
            return self
        return dataclasses.replace(self, light_every=self.light_every * time_scale,
                                   warmup=self.warmup * time_scale)  # fmt: skip


def fairness_topology() -> Topology:
    model = ModelSpec(name="gemma", served_name=MODEL, replicas=2, sim=SimOptions(max_num_seqs=4))
    return Topology(name="fairness", models=[model])


@dataclass(frozen=True)
class FairnessRun:
    """One half of the fairness row: the light tenant alone, then under the heavy tenant's flood."""

    alone: float | None  # the light tenant's TTFT p50 alone
    flooded: float | None  # and under the flood
    light: list[RequestResult]  # its requests under the flood
    heavy: list[RequestResult]  # the heavy tenant's answered or failed requests
    seconds: float  # how long the flood lasted

    @property
    def ratio(self) -> float | None:
        return self.flooded / self.alone if self.alone and self.flooded is not None else None

    @property
    def heavy_rate(self) -> float:
        """The heavy tenant's answered requests per second of flood."""
        return sum(1 for r in self.heavy if r.ok) / self.seconds if self.seconds > 0 else 0.0


async def _fairness_run(box: OneBox, keys: dict[str, str], settings: FairnessSettings) -> FairnessRun:
    """The light tenant alone, then under the heavy tenant's flood."""
    url = box.gateway_url
    light_specs = _specs(settings.light_requests, 8, seed=11)
    async with Runner(url, stream=True, timeout=120.0, api_key=keys["light"]) as light:
        alone = await _paced(light, light_specs, settings.light_every)
        heavy_specs = _specs(64, settings.heavy_tokens, seed=12)
        streams = settings.streams
        heavy = Runner(url, stream=True, timeout=120.0, max_connections=streams, api_key=keys["heavy"])
        async with heavy, _flood(heavy, streams, heavy_specs) as flood:
            began = time.perf_counter()
            await asyncio.sleep(settings.warmup)
            flooded = await _paced(light, light_specs, settings.light_every)
            heavy_done = list(flood)
            seconds = time.perf_counter() - began
    return FairnessRun(_p50_ttft(alone), _p50_ttft(flooded), flooded, heavy_done, seconds)


async def fairness(quick: bool = False, time_scale: float = 1.0, out: Output = print) -> ElasticResult:
    settings = (FairnessSettings.quick() if quick else FairnessSettings()).scaled(time_scale)
    result = ElasticResult(
        "fairness",
        f"tenant 'heavy' keeps {settings.streams} streams open on 2 pods x 4 slots; tenant 'light' sends "
        f"{settings.light_requests} requests, one every {settings.light_every:g} s",
    )
    runs: dict[str, FairnessRun] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fairness-") as directory:
        keys_path, keys = _keys_file(Path(directory))
        config = Path(directory) / "flow-control.yaml"
        config.write_text(yaml.safe_dump(with_flow_control(epp_config_document(), queue_depth=0)))
        for label, epp_config in (("flow control", config), ("FIFO (no queue)", None)):
            async with OneBox(fairness_topology(), time_scale=time_scale, api_keys=keys_path,
                              epp_config=epp_config, timeouts=_TIMEOUTS) as box:  # fmt: skip
                run = runs[label] = await _fairness_run(box, keys, settings)
            ratio = run.ratio
            errors = sum(1 for r in run.light if not r.ok)
            heavy_errors = sum(1 for r in run.heavy if not r.ok)
            times = "n/a" if ratio is None else f"{ratio:.2f}x"
            result.say(out, f"{label}: light TTFT p50 alone {_ms(run.alone)}, under the flood "
                       f"{_ms(run.flooded)} ({times}); light errors {errors}/{len(run.light)}; heavy "
                       f"answered {len(run.heavy) - heavy_errors} ({run.heavy_rate:.1f} req/s over "
                       f"{run.seconds:.1f} s), errors {heavy_errors}")  # fmt: skip
            if epp_config is not None:
                result.figures += [
                    Figure("light TTFT p50 flooded/alone", ratio, "x", FAIRNESS_TARGET),
                    Figure("light errors", float(errors), "", 0.0),
                ]
    fifo = runs["FIFO (no queue)"]
    queued = runs["flow control"]
    result.figures += [
        Figure("FIFO light TTFT p50 flooded/alone", fifo.ratio, "x"),
        Figure("heavy req/s with the queue / FIFO",
               queued.heavy_rate / fifo.heavy_rate if fifo.heavy_rate else None, "x"),
    ]  # fmt: skip
    return result


def _autoscaled(name: str, scaling: Mapping[str, float], slots: int = 4) -> Topology:
    model = ModelSpec(
        name="gemma", served_name=MODEL, sim=SimOptions(max_num_seqs=slots),
        autoscaling=Autoscaling.model_validate(scaling),
    )  # fmt: skip
    return Topology(name=name, models=[model])


async def cold_start(quick: bool = False, time_scale: float = 1.0, out: Output = print) -> ElasticResult:
    first = 1 if quick else 4
    scaling = {"minReplicas": 0, "maxReplicas": 1, "wakeTimeout": 60, "idleSeconds": 60}
    topology = _autoscaled("cold", scaling)
    result = ElasticResult("cold-start", f"{first} requests at once to a model at zero pods (max 1)")
    async with OneBox(topology, time_scale=time_scale) as box:
        [model] = topology.models
        assert box.replicas(model) == 0
        async with Runner(box.gateway_url, stream=True, timeout=120.0) as runner:
            start, sent = time.perf_counter(), time.monotonic()
            answers = await asyncio.gather(*(runner.send(s, start) for s in _specs(first, 8, seed=21)))
            woke = box.scaler.events[0].at - sent if box.scaler and box.scaler.events else None
            warm = await runner.send(_specs(1, 8, seed=22)[0], time.perf_counter())
    ttfts = [r.ttft for r in answers if r.ok and r.ttft is not None]
    failed = sum(1 for r in answers if not r.ok)
    result.say(out, f"time to first token of the first requests: min {_ms(min(ttfts, default=None))}, "
               f"max {_ms(max(ttfts, default=None))}; failed {failed}/{len(answers)}; the next request, "
               f"warm: {_ms(warm.ttft)}; the scaler saw the queued requests after {_ms(woke)}")  # fmt: skip
    result.figures += [
        Figure("first request TTFT", max(ttfts, default=None), " s"),
        Figure("failed requests", float(failed), "", 0.0),
    ]
    return result


@dataclass(frozen=True)
class StepSettings:
    before: float = 6.0  # seconds at the light load
    after: float = 24.0  # seconds at the heavy load
    light: int = 2  # concurrent streams before the step
    heavy: int = 24  # and after
    window: float = 3.0  # seconds per row of the timeline

    @classmethod
    def quick(cls) -> StepSettings:
        return cls(before=3.0, after=10.0, light=2, heavy=16, window=2.0)


async def load_step(quick: bool = False, time_scale: float = 1.0, out: Output = print) -> ElasticResult:
    s = StepSettings.quick() if quick else StepSettings()
    scaling = {"minReplicas": 1, "maxReplicas": 4, "targetQueuePerReplica": 2, "targetWaitingPerReplica": 2,
               "idleSeconds": 60, "pollingSeconds": 0.5}  # fmt: skip
    topology = _autoscaled("step", scaling)
    result = ElasticResult(
        "load-step", f"{s.light} -> {s.heavy} streams after {s.before:g} s on 1..4 autoscaled pods x 4 slots"
    )
    replicas: list[tuple[float, int]] = []
    async with OneBox(topology, time_scale=time_scale, timeouts=_TIMEOUTS) as box:
        [model] = topology.models
        specs = _specs(64, 32, seed=31)
        async with Runner(box.gateway_url, stream=True, timeout=120.0, max_connections=s.heavy) as runner:
            start = time.perf_counter()

            async def sample() -> None:
                while True:
                    replicas.append((time.perf_counter() - start, box.replicas(model)))
                    await asyncio.sleep(0.25)

            sampler = asyncio.create_task(sample())
            async with _flood(runner, s.light, specs, start) as before:
                await asyncio.sleep(s.before)
            async with _flood(runner, s.heavy, specs, start) as after:
                await asyncio.sleep(s.after)
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    done = [*before, *after]
    total = s.before + s.after
    windows = math.ceil(total / s.window)
    result.lines.append(f"{'t (s)':>8}  {'replicas':>8}  {'req/s':>6}  {'TTFT p50':>9}  errors")
    for w in range(windows):
        lo, hi = w * s.window, min(total, (w + 1) * s.window)
        ended = [r for r in done if r.e2e is not None and lo <= r.start + r.e2e < hi]
        pods = max((n for t, n in replicas if lo <= t < hi), default=0)
        ok = [r for r in ended if r.ok]
        result.lines.append(
            f"{lo:>4.0f}-{hi:<3.0f}  {pods:>8}  {len(ok) / (hi - lo):>6.1f}  {_ms(_p50_ttft(ok)):>9}  "
            f"{len(ended) - len(ok)}"
        )
    for line in result.lines:
        out(f"  {line}")
    tail = [r for r in after if r.ok and r.start + (r.e2e or 0) >= s.before + s.after - s.window * 2]
    errors = sum(1 for r in done if not r.ok)
    result.figures += [
        Figure("replicas reached", float(max((n for _, n in replicas), default=0))),
        Figure("req/s at the end", len(tail) / (s.window * 2)),
        Figure("TTFT p50 at the end", _p50_ttft(tail), " s"),
        Figure("errors", float(errors), "", 0.0),
    ]
    return result


async def run_elastic(
    names: Sequence[str], *, quick: bool = False, time_scale: float = 1.0, out: Callable[[str], None] = print
) -> list[ElasticResult]:
    runs = {"fairness": fairness, "cold-start": cold_start, "load-step": load_step}
    results = []
    for name in names:
        started = time.monotonic()
        out(f"{name}:")
        results.append(await runs[name](quick, time_scale, out))
        out(f"  {name}: {time.monotonic() - started:.1f} s")
    return results


def to_dict(results: Sequence[ElasticResult]) -> list[dict[str, object]]:
    return [
        {"name": r.name, "about": r.about, "passed": r.passed, "lines": r.lines,
         "figures": [{"what": f.what, "value": f.value, "unit": f.unit.strip(), "target": f.target,
                      "passed": f.passed} for f in r.figures]}
        for r in results
    ]  # fmt: skip


def format_elastic(results: Sequence[ElasticResult]) -> str:
    lines = []
    for r in results:
        verdict = "PASS" if r.passed else "FAIL"
        lines.append(f"{r.name} ({r.about}): {verdict}")
        lines += [f"  {f}" for f in r.figures]
    return "\n".join(lines)
