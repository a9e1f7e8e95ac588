"""SaturationDetector: is there an endpoint with capacity left, or should the EPP shed load?

An endpoint has capacity when its metrics are fresh (younger than ``metricsStalenessThreshold``), its
waiting queue is at most ``queueDepthThreshold`` and its KV-cache usage at most
``kvCacheUtilThreshold``. The pool is saturated when no candidate has capacity — stale or never
scraped metrics count as no capacity, and so does an empty candidate list.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from epp.datastore import Endpoint
from epp.scheduling.config import EndpointPickerConfig, SaturationDetectorConfig


class SaturationDetector:
    def __init__(
        self,
        queue_depth_threshold: int = 5,
        kv_cache_util_threshold: float = 0.8,
        metrics_staleness_threshold: float = 0.2,
    ) -> None:
        self.queue_depth_threshold = queue_depth_threshold
        self.kv_cache_util_threshold = kv_cache_util_threshold
        self.metrics_staleness_threshold = metrics_staleness_threshold

    @classmethod
    def from_config(
        cls, config: EndpointPickerConfig | SaturationDetectorConfig | None = None
    ) -> SaturationDetector:
        """Thresholds from the config's ``saturationDetector`` section (upstream defaults without one)."""
        if isinstance(config, EndpointPickerConfig):
            config = config.saturation_detector
        if config is None:
            config = SaturationDetectorConfig.model_validate({})
        return cls(
            config.queue_depth_threshold, config.kv_cache_util_threshold, config.metrics_staleness_threshold
        )

    def has_capacity(self, endpoint: Endpoint, now: float) -> bool:
        metrics = endpoint.metrics
        return (
            metrics.updated_at != 0.0
            and now - metrics.updated_at <= self.metrics_staleness_threshold
            and metrics.waiting <= self.queue_depth_threshold
            and metrics.kv_cache_usage <= self.kv_cache_util_threshold
        )

    def saturated(self, endpoints: Iterable[Endpoint], now: float | None = None) -> bool:
        """True when none of ``endpoints`` has capacity; ``now`` is ``time.monotonic()`` by default."""
        if now is None:
            now = time.monotonic()
        return not any(self.has_capacity(e, now) for e in endpoints)
