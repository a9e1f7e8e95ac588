"""Prometheus metrics under vLLM's names, in a registry owned by one simulator instance.

Gauges (running, waiting, KV usage, cache and LoRA info) are read from the engine at scrape time;
counters and histograms are updated as requests progress. Labels follow vLLM: ``model_name`` (the
first served model) and ``engine``. TTFT and end-to-end latency are measured (they include queueing);
inter-token latency records the engine's scaled per-token delays.

Rendering the page costs far more than serving it (a pool of 100 pods scraped every 50 ms asks
2,000 times a second), so the text is rendered again only when something on it changed (the
engine's state behind the gauges, or a request admitted or finished) or, whatever happened, once
it is a second old.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllmsim.config import SimConfig
from vllmsim.engine import Engine, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_LABELS = ("model_name", "engine")
_RENDERED_AT_MOST = 1.0  # seconds a rendered page is served again while nothing seems to change
_ENGINE_ID = "0"


class _EngineState(Collector):
    """Scrape-time gauges computed from the engine's current state."""

    def __init__(self, config: SimConfig, engine: Engine) -> None:
        self._config = config
        self._engine = engine
        self._labels = [config.models[0], _ENGINE_ID]
        self.lora_updated_at = time.time()

    def state(self) -> tuple[object, ...]:
        """What the gauges show; the page is rendered again when it changes."""
        engine = self._engine
        return (len(engine.running), len(engine.waiting), engine.pool.usage(),
                engine.waiting_adapters(), engine.running_adapters())  # fmt: skip

    def collect(self) -> Iterable[Metric]:
        engine, config = self._engine, self._config
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Number of requests in model execution batches.", labels=_LABELS
        )
        running.add_metric(self._labels, len(engine.running))
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels=_LABELS
        )
        waiting.add_metric(self._labels, len(engine.waiting))
        usage = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels=_LABELS
        )
        usage.add_metric(self._labels, engine.pool.usage())
        cache_info = GaugeMetricFamily(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
            labels=["engine", "block_size", "num_gpu_blocks", "num_cpu_blocks", "cache_dtype",
                    "enable_prefix_caching", "gpu_memory_utilization"],
        )
        cache_info.add_metric(
            [_ENGINE_ID, str(config.block_size), str(config.kv_cache_blocks), "0", "auto", "True", "0.9"], 1.0
        )
        # vLLM sets this gauge to the time it logs its stats, labelled with the adapter sets; readers
        # take the series with the newest timestamp. Only the current series is exported here, with
        # the time the engine's state last changed.
        lora = GaugeMetricFamily(
            "vllm:lora_requests_info", "Running stats on lora requests.",
            labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
        )
        waiting_adapters = ",".join(engine.waiting_adapters())
        running_adapters = ",".join(engine.running_adapters())
        lora.add_metric([str(len(config.loras)), waiting_adapters, running_adapters], self.lora_updated_at)
        return [running, waiting, usage, cache_info, lora]


class SimMetrics:
    """The metrics of one simulator instance."""

    def __init__(self, config: SimConfig, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._time_scale = config.time_scale
        labels = (config.models[0], _ENGINE_ID)
        self._state = _EngineState(config, engine)
        self.registry.register(self._state)
        # Bumped by every request admitted or finished (the counters and histograms changed).
        self._version = 0
        self._rendered: tuple[tuple[object, ...], int, float, bytes] | None = None
        reg = self.registry
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", _LABELS, registry=reg
        ).labels(*labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", _LABELS, registry=reg
        ).labels(*labels)
        self.prefix_cache_queries = Counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
            _LABELS, registry=reg,
        ).labels(*labels)
        self.prefix_cache_hits = Counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
            _LABELS, registry=reg,
        ).labels(*labels)
        self._success = Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            [*_LABELS, "finished_reason"], registry=reg,
        )
        self._success_length = self._success.labels(*labels, "length")
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            _LABELS, buckets=_TTFT_BUCKETS, registry=reg,
        ).labels(*labels)
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            _LABELS, buckets=_ITL_BUCKETS, registry=reg,
        ).labels(*labels)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
            _LABELS, buckets=_E2E_BUCKETS, registry=reg,
        ).labels(*labels)

    def admitted(self, seq: Sequence) -> None:
        """A request left the queue: its prompt was looked up in the prefix cache and prefilled."""
        self.prompt_tokens.inc(seq.prompt_tokens)
        self.prefix_cache_queries.inc(seq.prompt_tokens)
        self.prefix_cache_hits.inc(seq.cached_tokens)
        self._version += 1

    def finished(self, seq: Sequence, ttft_s: float | None, e2e_s: float) -> None:
        """A request ended (completed, or cut short by a disconnect)."""
        self.generation_tokens.inc(seq.generated)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        for delay in seq.itl_model_s[: max(0, seq.generated - 1)]:
            self.itl.observe(delay * self._time_scale)
        self.e2e.observe(e2e_s)
        if seq.generated == seq.max_tokens:
            self._success_length.inc()
        self._version += 1

    def render(self) -> bytes:
        """The page; the last one again while neither the engine's state nor any request changed."""
        state, now = self._state.state(), time.monotonic()
        last = self._rendered
        if last is not None and last[:2] == (state, self._version) and now - last[2] < _RENDERED_AT_MOST:
            return last[3]
        if last is None or last[0] != state:
            self._state.lora_updated_at = time.time()
        page = generate_latest(self.registry)
        self._rendered = (state, self._version, now, page)
        return page
