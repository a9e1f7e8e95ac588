"""The flow-control queue's metrics, under the names upstream's picker exports.

llm-d-router exports ``llm_d_epp_flow_control_*`` and still the older
``inference_extension_flow_control_*`` (Gateway API Inference Extension); dashboards, alerts and
autoscalers (KEDA triggers) written for either read ours. Labels as upstream: ``fairness_id``,
``priority``, ``inference_pool``, ``model_name``, ``target_model_name`` and, on the wait-time
histogram, ``outcome`` (``dispatched``, ``rejected``, ``expired``, ``cancelled``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

PREFIXES = ("llm_d_epp_flow_control", "inference_extension_flow_control")
QUEUE_SIZE = "queue_size"
QUEUE_BYTES = "queue_bytes"
QUEUE_DURATION = "request_queue_duration_seconds"
POOL_SATURATION = "pool_saturation"
LABELS = ("fairness_id", "priority", "inference_pool", "model_name", "target_model_name")
OUTCOMES = ("dispatched", "rejected", "expired", "cancelled")
_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def names(suffix: str) -> tuple[str, ...]:
    """Both spellings of one metric (``queue_size`` -> the llm-d name and the older one)."""
    return tuple(f"{prefix}_{suffix}" for prefix in PREFIXES)


class FlowControlMetrics:
    """The queue's gauges and its wait-time histogram, each under both upstream spellings."""

    def __init__(self, registry: CollectorRegistry, pool: str) -> None:
        self.pool = pool
        self._size = [Gauge(n, "Requests waiting in the EPP's flow-control queue.", LABELS, registry=registry)
                      for n in names(QUEUE_SIZE)]
        self._bytes = [Gauge(n, "Body bytes of the requests waiting in the flow-control queue.", LABELS,
                             registry=registry) for n in names(QUEUE_BYTES)]
        self._wait = [Histogram(n, "Time a request spent in the flow-control queue, by how it left it.",
                                (*LABELS, "outcome"), buckets=_WAIT_BUCKETS, registry=registry)
                      for n in names(QUEUE_DURATION)]
        self._saturation = [Gauge(n, "1 while every endpoint of the pool is saturated, else 0.",
                                  ("inference_pool",), registry=registry) for n in names(POOL_SATURATION)]

    def queued(self, fairness_id: str, priority: int, model: str, size: int, delta: int) -> None:
        """One request of ``size`` body bytes joined (``delta`` 1) or left (-1) the queue."""
        labels = (fairness_id, str(priority), self.pool, model, model)
        for gauge in self._size:
            gauge.labels(*labels).inc(delta)
        for gauge in self._bytes:
            gauge.labels(*labels).inc(delta * size)

    def left(self, fairness_id: str, priority: int, model: str, outcome: str, seconds: float) -> None:
        labels = (fairness_id, str(priority), self.pool, model, model, outcome)
        for histogram in self._wait:
            histogram.labels(*labels).observe(seconds)

    def saturation(self, saturated: bool) -> None:
        for gauge in self._saturation:
            gauge.labels(self.pool).set(1.0 if saturated else 0.0)
