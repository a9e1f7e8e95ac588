"""Prometheus metrics and structured JSON logs for the EPP and the BBR.

Each server owns a ``Telemetry`` with its own registry (so several servers can share a process in
tests). Per-endpoint gauges are read from the datastore when Prometheus scrapes, costing the
request path nothing.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.auth.labels import DEFAULT_MAX_TENANTS, TenantLabels
from epp.contract import TENANT_HEADER
from epp.datastore import Datastore

# The ``model`` label of a request naming a model the server does not know: the label's values stay
# bounded whatever clients send. A request naming no model is labelled ``none``.
OTHER_MODEL = "other"

_SCHEDULING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
# Request latency buckets (seconds), from tens of milliseconds to long generations.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# Upstream's metric names (docs/metrics.md lists each with its source): the llm-d router's
# canonical ``llm_d_epp_*`` and the Gateway API Inference Extension's older ``inference_pool_*`` /
# ``inference_objective_*``, which GKE's guides and HPA examples use. Both spellings are exported.
UPSTREAM_PREFIXES = ("llm_d_epp", "inference_objective")
_UPSTREAM_MODEL_LABELS = ["model_name", "target_model_name"]


class _PoolCollector(Collector):
    """The pool gauges under upstream's names (label ``name``: the pool), and ready endpoints per
    model, read from the datastore's current view at scrape time."""

    def __init__(self, datastore: Datastore, pool: str) -> None:
        self._datastore = datastore
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        view = self._datastore.view
        ready = view.endpoints
        count = len(ready)
        queue = sum(e.metrics.waiting for e in ready) / count if count else 0.0
        running = sum(e.metrics.running for e in ready) / count if count else 0.0
        kv = sum(e.metrics.kv_cache_usage for e in ready) / count if count else 0.0
        pool = [self._pool]
        over = "over the pool's ready endpoints."
        for prefix, ready_name in (("llm_d_epp", "ready_endpoints"), ("inference_pool", "ready_pods")):
            for suffix, value, text in (
                ("average_queue_size", queue, f"Average vllm:num_requests_waiting {over}"),
                ("average_running_requests", running, f"Average vllm:num_requests_running {over}"),
                ("average_kv_cache_utilization", kv, f"Average KV-cache utilization (0-1) {over}"),
                (ready_name, float(count), "Ready endpoints of the pool (models known, not ejected)."),
            ):
                family = GaugeMetricFamily(f"{prefix}_{suffix}", text, labels=["name"])
                family.add_metric(pool, value)
                yield family
        per_pod = GaugeMetricFamily("inference_pool_per_pod_queue_size", "vllm:num_requests_waiting of each "
                                    "ready endpoint.", labels=["model_server_pod", "name"])
        for endpoint in ready:
            per_pod.add_metric([endpoint.name, self._pool], endpoint.metrics.waiting)
        yield per_pod
        by_model = GaugeMetricFamily("epp_model_ready_endpoints", "Ready endpoints serving each model the "
                                     "pool knows (0: requests for it get a 503).", labels=["model"])
        for model in sorted(view.known_models):
            by_model.add_metric([model], len(view.by_model.get(model, ())))
        yield by_model


class _EndpointCollector(Collector):
    """Per-endpoint gauges, read from the datastore at scrape time."""

    def __init__(self, datastore: Datastore) -> None:
        self._datastore = datastore

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint", "name"]
        in_flight = GaugeMetricFamily("epp_endpoint_in_flight_requests", "Requests this EPP routed to the "
                                      "endpoint whose responses have not finished.", labels=labels)
        waiting = GaugeMetricFamily("epp_endpoint_waiting_requests", "vllm:num_requests_waiting at the last "
                                    "scrape.", labels=labels)
        running = GaugeMetricFamily("epp_endpoint_running_requests", "vllm:num_requests_running at the last "
                                    "scrape.", labels=labels)
        kv = GaugeMetricFamily("epp_endpoint_kv_cache_usage_ratio",
                               "KV-cache usage (0-1) at the last scrape.", labels=labels)
        age = GaugeMetricFamily("epp_endpoint_metrics_age_seconds", "Seconds since the last successful "
                                "metrics scrape (+Inf when never scraped).", labels=labels)
        models = GaugeMetricFamily("epp_endpoint_models", "Models the endpoint serves (0 until probed).",
                                   labels=labels)
        ejected = GaugeMetricFamily("epp_endpoint_ejected", "1 while the endpoint is out of rotation "
                                    "(failing scrapes or refusing connections).", labels=labels)
        now = time.monotonic()
        for endpoint in list(self._datastore):
            values = [endpoint.address, endpoint.name]
            in_flight.add_metric(values, endpoint.in_flight)
            waiting.add_metric(values, endpoint.metrics.waiting)
            running.add_metric(values, endpoint.metrics.running)
            kv.add_metric(values, endpoint.metrics.kv_cache_usage)
            age.add_metric(values, endpoint.metrics.age(now))
            models.add_metric(values, len(endpoint.models))
            ejected.add_metric(values, int(endpoint.ejected))
        yield from (in_flight, waiting, running, kv, age, models, ejected)


class _ScrapeCounter(Collector):
    """``epp_metrics_scrapes_total``: scrapes of the endpoints' ``/metrics`` begun, read from the
    scraper (2,000 a second at 100 pods: not worth a locked counter update each)."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("epp_metrics_scrapes", "Scrapes of the endpoints' /metrics begun.")
        family.add_metric([], self._read())
        yield family


class Telemetry:
    """The metrics of one EPP or BBR."""

    def __init__(self, component: str, datastore: Datastore | None = None, *, pool: str = "") -> None:
        self.component = component
        self.registry = CollectorRegistry()
        # process_cpu_seconds_total and friends: the dashboard's CPU panel.
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            f"{component}_requests",
            "Requests by model (a known one, 'other' or 'none') and outcome (routed, models, passthrough, "
            "or the refusal reason).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.scheduling_seconds = Histogram(
            f"{component}_scheduling_duration_seconds",
            "Time to pick an endpoint for one request.",
            buckets=_SCHEDULING_BUCKETS,
            registry=self.registry,
        )
        self.tokens_total = Counter(
            f"{component}_tokens", "Tokens in the usage of the answers this EPP meters (an API key "
            "tenant's).", ["model", "kind"], registry=self.registry,
        )
        # Per API key (by its name, never the key): what a platform team bills by.
        self.key_requests = Counter(
            f"{component}_api_key_requests",
            "Requests by API key name ('_none': no key, '_unknown': a key not in the list), model and "
            "outcome.",
            ["api_key_name", "model", "outcome"],
            registry=self.registry,
        )
        self.key_tokens = Counter(
            f"{component}_api_key_tokens",
            "Tokens reported in responses' usage by API key name (from the front door's "
            f"{TENANT_HEADER} header; '_none' without it, '_other' past {DEFAULT_MAX_TENANTS} names), "
            "model and kind.",
            ["api_key_name", "model", "kind"],
            registry=self.registry,
        )
        self.key_reloads = Counter(
            f"{component}_api_key_reloads",
            "Re-reads of the API key file by result (ok; error: entries dropped, or no key valid).",
            ["result"], registry=self.registry,
        )
        self.key_list_degraded = Gauge(
            f"{component}_api_key_list_degraded",
            "1 while the API key list in use dropped bad entries or holds no valid key (empty, unreadable "
            "or missing file: every request is refused); alert on it.", registry=self.registry,
        )
        self.key_list_keys = Gauge(
            f"{component}_api_key_list_keys", "Valid API keys in the list in use.", registry=self.registry,
        )
        self._key_request_children: dict[tuple[str, str, str], Counter] = {}
        self._answered_children: dict[tuple[str, int, str | None], list[Counter]] = {}
        self._tenants = TenantLabels()
        self.discovery_errors = Counter(
            f"{component}_discovery_errors",
            "Failed discovery operations by kind (static, kubernetes, models, metrics; models_unexpected "
            "and metrics_unexpected count bugs met while polling, which polling survives).",
            ["kind"],
            registry=self.registry,
        )
        self._scrapes: _ScrapeCounter | None = None
        self.ejections = Counter(
            f"{component}_endpoint_ejections",
            "Endpoints taken out of rotation, by evidence: 'scrape' (failed metrics scrapes in a row) or "
            "'connect' (routed requests whose connection the endpoint refused).",
            ["reason"],
            registry=self.registry,
        )
        # Per-model counters and histograms under upstream's names (both spellings), labelled
        # model_name and target_model_name (the same here: the pool serves what was asked for).
        self._upstream_requests = [
            Counter(f"{prefix}_request", "Requests by model.", _UPSTREAM_MODEL_LABELS, registry=self.registry)
            for prefix in UPSTREAM_PREFIXES
        ]
        self._upstream_errors = [
            Counter(f"{prefix}_request_error", "Failed requests by model and error code (the refusal reason, "
                    "or the HTTP status of a routed request's failed answer).",
                    [*_UPSTREAM_MODEL_LABELS, "error_code"], registry=self.registry)
            for prefix in UPSTREAM_PREFIXES
        ]
        self._upstream_durations = [
            Histogram(f"{prefix}_request_duration_seconds", "Seconds from the request to the end of its "
                      "answer, for the answers the EPP reads to their end.", _UPSTREAM_MODEL_LABELS,
                      buckets=_LATENCY_BUCKETS, registry=self.registry)
            for prefix in UPSTREAM_PREFIXES
        ]
        self._upstream_ttft = [
            Histogram(f"{prefix}_request_ttft_seconds", "Seconds from the request to the first chunk of its "
                      "answer's body, for the answers the EPP reads.", _UPSTREAM_MODEL_LABELS,
                      buckets=_LATENCY_BUCKETS, registry=self.registry)
            for prefix in UPSTREAM_PREFIXES
        ]
        # Answers by status class as the EPP saw them: a routed request's answer or the EPP's refusal.
        self.responses = Counter(
            f"{component}_responses", "Answers by model and status class (2xx, 4xx, 5xx; 'none': the stream "
            "ended before any status).", ["model", "code"], registry=self.registry,
        )
        # Routing accuracy (epp.answer_check): answers checked against the model asked for, and those
        # that came from another model (or whose pod said it does not serve the model).
        self.answers_checked = Counter(
            f"{component}_answer_checks", "Answers whose model was checked against the request's.", ["model"],
            registry=self.registry,
        )
        self.misrouted = Counter(
            f"{component}_misrouted", "Checked answers that came from another model than the one asked for, "
            "by the model asked for and the pod that answered.", ["model", "model_server_pod"],
            registry=self.registry,
        )
        # The prefix index settled by the cached tokens the pods report (epp.requestcontrol.cached_tokens).
        self.cache_feedback = Counter(
            f"{component}_cached_tokens_feedback", "Predicted prefix-cache hits settled by the cached "
            "tokens their answer reported: confirmed, stale (the pod did not have them) or unreported.",
            ["outcome"], registry=self.registry,
        )
        self.stale_entries = Counter(
            f"{component}_prefix_index_stale_entries", "Prefix index entries dropped because a pod's "
            "answer showed it no longer held them.", registry=self.registry,
        )
        if datastore is not None:
            self.registry.register(_EndpointCollector(datastore))
            self.registry.register(_PoolCollector(datastore, pool or component))
        self._server: WSGIServer | None = None

    def request(self, model: str, outcome: str) -> None:
        self.requests.labels(model or "none", outcome).inc()

    def answered(self, model: str, status: int, error_code: str | None) -> None:
        """One request's end: its status class, and under upstream's names the request and its error
        (when ``error_code`` is set). The labelled children are looked up once per label set (bounded:
        models x status classes x refusal reasons and error statuses)."""
        key = (model, status // 100, error_code)
        children = self._answered_children.get(key)
        if children is None:
            children = [self.responses.labels(model or "none", f"{status // 100}xx" if status else "none")]
            if model:
                children += [counter.labels(model, model) for counter in self._upstream_requests]
                if error_code is not None:
                    children += [errors.labels(model, model, error_code) for errors in self._upstream_errors]
            self._answered_children[key] = children
        for child in children:
            child.inc()

    def answer_checked(self, model: str) -> None:
        self.answers_checked.labels(model).inc()

    def answer_misrouted(self, model: str, pod: str) -> None:
        self.misrouted.labels(model, pod).inc()

    def cached_tokens_feedback(self, outcome: str, stale_entries: int = 0) -> None:
        self.cache_feedback.labels(outcome).inc()
        if stale_entries:
            self.stale_entries.inc(stale_entries)

    def latency(self, model: str, ttft: float, duration: float) -> None:
        for ttfts, durations in zip(self._upstream_ttft, self._upstream_durations, strict=True):
            ttfts.labels(model, model).observe(ttft)
            durations.labels(model, model).observe(duration)

    def ejected(self, reason: str) -> None:
        self.ejections.labels(reason).inc()

    def count_scrapes(self, read: Callable[[], int]) -> None:
        """Export ``epp_metrics_scrapes_total`` from ``read()`` (the scraper's count); once."""
        if self._scrapes is None:
            self._scrapes = _ScrapeCounter(read)
            self.registry.register(self._scrapes)

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        self.tokens_total.labels(model, "prompt").inc(prompt)
        self.tokens_total.labels(model, "completion").inc(completion)

    def key_request(self, name: str, model: str, outcome: str) -> None:
        # The labelled child is looked up once per label set (bounded: key names x models x outcomes).
        labels = (name, model or "none", outcome)
        child = self._key_request_children.get(labels)
        if child is None:
            child = self._key_request_children[labels] = self.key_requests.labels(*labels)
        child.inc()

    def tenant_tokens(self, tenant: str | None, model: str, prompt: int, completion: int) -> None:
        """Count a response's usage for the tenant the front door named (bounded label values)."""
        name = self._tenants.label(tenant)
        self.key_tokens.labels(name, model, "prompt").inc(prompt)
        self.key_tokens.labels(name, model, "completion").inc(completion)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (a background thread); returns the bound port."""
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Structured JSON logs on stderr at ``level`` (debug shows every pick and its scores)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
