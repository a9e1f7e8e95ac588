"""The cache-flush row of ``make bench-matrix`` (``--rows cache-flush``): one pod restarts mid-run.

On the cache box (four simulated pods of one model, a 16k-token KV cache each), a shared-prefix
workload (8 groups x 2,000-token system prompts, 16 at a time) goes through the gateway in two
phases: a warm-up, then pod ``gemma-0`` is killed and started again by the box's supervisor on the
same port with an empty cache (the EPP never sees it leave: its prefix index still says the pod
holds what it held), then the measured phase, the same number of requests. It runs twice, each on a
fresh box sending the same requests: the EPP learning from the cached tokens the pods report
(``--cached-tokens-feedback-rate 1``, ``epp.requestcontrol.cached_tokens``) and not (rate 0). And
that for two EndpointPickerConfigs: the shipped default (``prefix-affinity-scorer``: a prefix's
home pod comes from a rendezvous hash, the index only chooses among the other pods), and one where
the learned index decides (``prefix-cache-scorer`` weighted 3 against ``queue-scorer`` and
``kv-cache-utilization-scorer`` at 2, in the style of upstream's examples).

Figures of the measured phase, for each run: the pods' prefix-cache hit rate
(``vllm:prefix_cache_hits`` over ``vllm:prefix_cache_queries``, in tokens, summed over the four
pods), TTFT p50 and p90, requests per second, gateway accuracy, the EPP's CPU per request
(``process_cpu_seconds_total``: following every stream of a predicted hit to its usage event is what
learning costs), and what the EPP's index learnt (predicted hits confirmed, found stale, entries
dropped). Only the accuracy has a target (100 %); the rest is the measured effect of the correction,
which moves from run to run on a shared machine.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.client import RunResult, run
from bench.stats import Summary, percentile, sample_totals, summarize_results
from bench.workloads import Workload, WorkloadConfig, generate
from onebox.box import OneBox
from onebox.topology import ModelSpec, SimOptions, Topology

ROWS = ("cache-flush",)
MODEL = "google/gemma-2b-it"
RESTARTED = "gemma-0"
Output = Callable[[str], None]
# The EndpointPickerConfig where the learned prefix index decides (None: the shipped default).
PREFIX_CACHE_CONFIG = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - pluginRef: max-score-picker
"""
CONFIGS: dict[str, str | None] = {"default": None, "prefix-cache-scorer": PREFIX_CACHE_CONFIG}


def topology() -> Topology:
    """The matrix's cache box: four pods of one model, 1,024 KV blocks of 16 tokens each."""
    pods = ModelSpec(name="gemma", served_name=MODEL, replicas=4, sim=SimOptions(kv_cache_blocks=1024))
    return Topology(name="cache", models=[pods])


def workload(quick: bool) -> WorkloadConfig:
    """Both phases' requests (the first half warms the caches up, the second is measured)."""
    return WorkloadConfig(
        workload=Workload.SHARED_PREFIX, models=[MODEL], requests=96 if quick else 320, groups=8,
        prompts_per_group=16, system_prompt_len=2000, question_len=32, max_tokens=16, seed=11,
        prefix_salt="flush ",
    )  # fmt: skip


@dataclass
class Phase:
    """The measured phase of one run: the client's figures, the pods' and the EPP's counters."""

    summary: Summary
    ttft_p90: float | None
    hit_tokens: float
    queried_tokens: float
    feedback: dict[str, float]  # epp_cached_tokens_feedback by outcome, "stale entries", the EPP's "cpu s"

    @property
    def epp_cpu_ms_per_request(self) -> float | None:
        requests = self.summary.requests
        return self.feedback["cpu s"] * 1000 / requests if requests else None

    @property
    def hit_rate(self) -> float | None:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else None


@dataclass
class FlushResult:
    """The row: the same requests with the EPP learning from cached tokens and without."""

    name: str
    learning: Phase
    not_learning: Phase
    restart_seconds: float

    @property
    def passed(self) -> bool:
        return self.learning.summary.accuracy == 1.0 and self.not_learning.summary.accuracy == 1.0


async def _scrape(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """Each sample of a /metrics page summed over its labels, by sample name (the feedback counter
    by outcome)."""
    return sample_totals((await client.get(url)).text, {"epp_cached_tokens_feedback_total": "outcome"})


async def _cache_counters(client: httpx.AsyncClient, box: OneBox) -> tuple[float, float]:
    """(hit tokens, queried tokens) of the prefix cache, summed over the box's pods."""
    pages = await asyncio.gather(*(_scrape(client, f"{pod.url}/metrics") for pod in box.pods))
    return (sum(p.get("vllm:prefix_cache_hits_total", 0.0) for p in pages),
            sum(p.get("vllm:prefix_cache_queries_total", 0.0) for p in pages))  # fmt: skip


async def _epp_counters(client: httpx.AsyncClient, box: OneBox) -> dict[str, float]:
    pages = [await _scrape(client, f"http://127.0.0.1:{e.metrics_port}/metrics")
             for servers in box.epps.values() for e in servers]  # fmt: skip
    out = {"stale entries": sum(p.get("epp_prefix_index_stale_entries_total", 0.0) for p in pages),
           "cpu s": sum(p.get("process_cpu_seconds_total", 0.0) for p in pages)}
    for outcome in ("confirmed", "stale", "unreported"):
        out[outcome] = sum(p.get(f"epp_cached_tokens_feedback_total:{outcome}", 0.0) for p in pages)
    return out


async def _back_in_rotation(client: httpx.AsyncClient, box: OneBox, within: float = 30.0) -> None:
    """Until every EPP routes to the restarted pod again (its scrapes failed while it was down)."""
    deadline = time.monotonic() + within
    urls = [f"http://127.0.0.1:{e.metrics_port}/metrics" for servers in box.epps.values() for e in servers]
    while time.monotonic() < deadline:
        texts = [(await client.get(url)).text for url in urls]
        ejected = [line for text in texts for line in text.splitlines()
                   if line.startswith("epp_endpoint_ejected{") and f'"{RESTARTED}"' in line]  # fmt: skip
        if ejected and all(line.rstrip().endswith(" 0.0") for line in ejected):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{RESTARTED} was not back in the EPPs' rotation after {within:.0f} s")


def _config_file(config: str, directory: Path) -> Path | None:
    text = CONFIGS[config]
    if text is None:
        return None
    path = directory / "epp-config.yaml"
    path.write_text(text)
    return path


async def flush_run(
    config: str, learning: bool, quick: bool, time_scale: float, out: Output
) -> tuple[Phase, float]:
    """One run on a fresh box: warm-up, restart, measured phase; also the restart's seconds."""
    specs = generate(workload(quick))
    half = len(specs) // 2
    settings = {"cached_tokens_feedback_rate": 1.0 if learning else 0.0}
    with tempfile.TemporaryDirectory(prefix="flush-") as scratch:
        box = OneBox(topology(), time_scale=time_scale, epp_settings=settings,
                     epp_config=_config_file(config, Path(scratch)))  # fmt: skip
        async with box, httpx.AsyncClient(timeout=10.0) as client:
            await run(box.gateway_url, specs[:half], concurrency=16, stream=True, request_timeout=120.0,
                      label="warm-up", progress=False)  # fmt: skip
            started = time.monotonic()
            await box.restart_pod(RESTARTED)
            await _back_in_rotation(client, box)
            restart = time.monotonic() - started
            hits, queries = await _cache_counters(client, box)
            before = await _epp_counters(client, box)
            measured: RunResult = await run(box.gateway_url, specs[half:], concurrency=16, stream=True,
                                            request_timeout=120.0, label="after", progress=False)  # fmt: skip
            hits_after, queries_after = await _cache_counters(client, box)
            after = await _epp_counters(client, box)
    summary = summarize_results(measured.results, measured.duration)
    ttfts = [r.ttft for r in measured.results if r.ok and r.ttft is not None]
    phase = Phase(summary, percentile(ttfts, 90), hits_after - hits, queries_after - queries,
                  {k: after[k] - before.get(k, 0.0) for k in after})  # fmt: skip
    out(f"  cache-flush, {config}, {'learning' if learning else 'not learning'} from cached tokens: "
        f"{RESTARTED} back in {restart:.1f} s; hit rate after {_pct(phase.hit_rate)}")  # fmt: skip
    return phase, restart


async def run_flush(
    names: Sequence[str], *, quick: bool = False, time_scale: float = 1.0, out: Output = print
) -> list[FlushResult]:
    if "cache-flush" not in names:
        return []
    results = []
    for config in CONFIGS:
        learning, restart = await flush_run(config, True, quick, time_scale, out)
        not_learning, _ = await flush_run(config, False, quick, time_scale, out)
        results.append(FlushResult(f"cache-flush ({config})", learning, not_learning, restart))
    return results


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def format_flush(results: Sequence[FlushResult]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.name}: pod {RESTARTED} restarted between the phases ({r.restart_seconds:.1f} s to "
                     "be back in rotation); figures of the measured phase")  # fmt: skip
        for label, phase in (("learning from cached tokens", r.learning), ("not learning", r.not_learning)):
            s = phase.summary
            learnt = ", ".join(f"{k} {v:g}" for k, v in phase.feedback.items() if k != "cpu s")
            cpu = phase.epp_cpu_ms_per_request
            lines.append(
                f"  {label:28s} hit rate {_pct(phase.hit_rate):>6s}  TTFT p50 {_ms(s.ttft.p50):>7s}  "
                f"p90 {_ms(phase.ttft_p90):>7s}  {s.requests_per_s:.1f} req/s  accuracy "
                f"{s.accuracy * 100:.1f}%  EPP CPU {'-' if cpu is None else f'{cpu:.2f}'} ms/request; "
                f"{learnt}"
            )
        lines.append(f"  verdict: {'PASS' if r.passed else 'FAIL'} (target: 100% accuracy in both runs)")
    return "\n".join(lines)


def to_dict(results: Sequence[FlushResult]) -> list[dict[str, object]]:
    def phase(p: Phase) -> dict[str, object]:
        return {"hit_rate": p.hit_rate, "hit_tokens": p.hit_tokens, "queried_tokens": p.queried_tokens,
                "ttft_p90_s": p.ttft_p90, "feedback": p.feedback,
                "summary": p.summary.model_dump(mode="json")}  # fmt: skip

    return [{"name": r.name, "restart_s": r.restart_seconds, "passed": r.passed,
             "learning": phase(r.learning), "not_learning": phase(r.not_learning)} for r in results]
