"""Scrape every endpoint's own ``/metrics`` on a fixed interval (default 50 ms), each scrape bounded
by a timeout (default 0.5 s).

Each endpoint has its own scrape loop, so all are scraped concurrently and a slow one only delays
itself. A successful scrape stores a fresh :class:`Metrics` through ``Datastore.set_metrics``; a failed
one leaves the previous object in place, so ``Endpoint.metrics.age()`` grows and the scheduler's
saturation detector sees the endpoint as stale. With an :class:`~epp.discovery.ejection.Ejector`
every result is also evidence for ejection: failed scrapes in a row take the endpoint out of
rotation, a successful one (after its ejection time) brings it back.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from epp.datastore import Datastore, Endpoint
from epp.discovery._workers import POLL_ERRORS, EndpointPoller, ErrorCallback
from epp.discovery.ejection import Ejector
from epp.discovery.vllm_metrics import MetricsParseError, parse_vllm_metrics

log = logging.getLogger(__name__)


class MetricsScraper(EndpointPoller):
    """Keeps ``Endpoint.metrics`` of every endpoint in the datastore fresh."""

    name = "metrics"

    def __init__(
        self,
        datastore: Datastore,
        session: aiohttp.ClientSession,
        interval: float = 0.05,
        timeout: float = 0.5,
        *,
        on_error: ErrorCallback | None = None,
        ejector: Ejector | None = None,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        super().__init__(datastore, session, interval, timeout, on_error, "metrics-scraper")
        self._failing: set[str] = set()
        self._ejector = ejector
        self.scrapes = 0

    async def run(self) -> None:
        """Scrape every endpoint (present and future) until cancelled."""
        try:
            await super().run()
        finally:
            self._failing.clear()

    async def scrape(self, endpoint: Endpoint) -> bool:
        """One scrape; on success store the endpoint's new metrics. True when it succeeded."""
        self.scrapes += 1
        try:
            text = await self._get(endpoint, "/metrics", _read_text, MetricsParseError)
            metrics = parse_vllm_metrics(text, time.monotonic())
        except POLL_ERRORS as exc:
            self._count_error()
            why = str(exc) or type(exc).__name__
            if endpoint.address not in self._failing:
                self._failing.add(endpoint.address)
                log.warning(
                    "metrics scrape of %s (%s) failing: %s; its metrics go stale",
                    endpoint.address,
                    endpoint.name,
                    why,
                )
            if self._ejector is not None:
                self._ejector.scrape_failed(endpoint, why)
            return False
        except Exception:
            self._unexpected(endpoint, "metrics scrape")
            return False
        if endpoint.address in self._failing:
            self._failing.discard(endpoint.address)
            log.info("metrics scrape of %s (%s) recovered", endpoint.address, endpoint.name)
        stored = self._datastore.set_metrics(endpoint, metrics)
        if stored and self._ejector is not None:
            self._ejector.scrape_succeeded(endpoint)
        return stored

    async def _follow(self, endpoint: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        try:
            while True:
                await self.scrape(endpoint)
                due += self._interval
                delay = due - loop.time()
                if delay < 0:  # fell behind (slow endpoint): don't burst to catch up
                    due = loop.time()
                    delay = 0.0
                await asyncio.sleep(delay)
        finally:
            self._failing.discard(endpoint.address)
            self._forget(endpoint)


async def _read_text(response: aiohttp.ClientResponse) -> str:
    return await response.text(encoding="utf-8", errors="replace")
