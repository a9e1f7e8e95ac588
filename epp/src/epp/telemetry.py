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
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.auth.labels import DEFAULT_MAX_TENANTS, TenantLabels
from epp.contract import TENANT_HEADER
from epp.datastore import Datastore

# The ``model`` label of a request naming a model the server does not know: the label's values stay
# bounded whatever clients send. A request naming no model is labelled ``none``.
OTHER_MODEL = "other"

_SCHEDULING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


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


class Telemetry:
    """The metrics of one EPP or BBR."""

    def __init__(self, component: str, datastore: Datastore | None = None) -> None:
        self.component = component
        self.registry = CollectorRegistry()
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
        self._tenants = TenantLabels()
        self.discovery_errors = Counter(
            f"{component}_discovery_errors",
            "Failed discovery operations by kind (static, kubernetes, models, metrics; models_unexpected "
            "and metrics_unexpected count bugs met while polling, which polling survives).",
            ["kind"],
            registry=self.registry,
        )
        self.ejections = Counter(
            f"{component}_endpoint_ejections",
            "Endpoints taken out of rotation, by evidence: 'scrape' (failed metrics scrapes in a row) or "
            "'connect' (routed requests whose connection the endpoint refused).",
            ["reason"],
            registry=self.registry,
        )
        if datastore is not None:
            self.registry.register(_EndpointCollector(datastore))
        self._server: WSGIServer | None = None

    def request(self, model: str, outcome: str) -> None:
        self.requests.labels(model or "none", outcome).inc()

    def ejected(self, reason: str) -> None:
        self.ejections.labels(reason).inc()

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
