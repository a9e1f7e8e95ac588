"""Scrape every endpoint's own ``/metrics`` on a fixed interval (default 50 ms), each scrape bounded
by a timeout (default 0.5 s).

A successful scrape stores a fresh :class:`Metrics` through ``Datastore.set_metrics``; a failed one
leaves the previous object in place, so ``Endpoint.metrics.age()`` grows and the scheduler's
saturation detector sees the endpoint as stale. With an :class:`~epp.discovery.ejection.Ejector`
every result is also evidence for ejection: failed scrapes in a row take the endpoint out of
rotation, a successful one (after its ejection time) brings it back.

Built for pools of a hundred pods (2,000 scrapes a second at 50 ms): one timer wakes every
interval and sends a ``GET /metrics`` on each idle endpoint's keep-alive connection
(``epp.discovery.http1``); each answer is read and parsed in the event loop's callbacks, so no task
runs per scrape. An answer byte-for-byte the same as the endpoint's previous one is not parsed again
(an idle server's page rarely changes). An endpoint whose scrape is still under way is skipped at
that tick, so a slow one only delays itself; past the timeout its connection is dropped and the
scrape counts as failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from epp.contract import join_host_port
from epp.datastore import Datastore, Endpoint, Metrics
from epp.discovery._workers import ErrorCallback, PollErrors
from epp.discovery.ejection import Ejector
from epp.discovery.http1 import Connection, Response, request_bytes
from epp.discovery.vllm_metrics import MetricsParseError, parse_vllm_metrics

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"


@dataclass(eq=False, slots=True)
class _Target:
    """One endpoint's scraping state."""

    endpoint: Endpoint
    request: bytes
    connection: Connection | None = None
    connecting: asyncio.Task[None] | None = None
    started: float = 0.0  # loop time the scrape under way began; 0.0: none under way
    # time.monotonic() when the scrape under way (or the last one) was sent (its request written): what
    # it reads counts every request the pod had by then; the requests routed since count on top.
    sent_at: float = 0.0
    # The endpoint's in-flight count when that scrape was sent (Metrics.own_at).
    own_at: int = -1
    last_body: bytes | None = None
    last_metrics: Metrics | None = None


def _send(target: _Target, connection: Connection) -> None:
    """Ask ``target`` for its page on ``connection``, noting when (``_Target.sent_at``)."""
    target.sent_at = time.monotonic()
    target.own_at = target.endpoint.load.count
    connection.get(target.request)


class MetricsScraper(PollErrors):
    """Keeps ``Endpoint.metrics`` of every endpoint in the datastore fresh.

    ``scrapes`` counts the scrapes begun; ``errors`` the failed ones (:class:`PollErrors`).
    """

    name = "metrics"

    def __init__(
        self,
        datastore: Datastore,
        interval: float = 0.05,
        timeout: float = 0.5,
        *,
        on_error: ErrorCallback | None = None,
        ejector: Ejector | None = None,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        super().__init__(on_error)
        self._datastore = datastore
        self._interval = interval
        self._timeout = timeout
        self._ejector = ejector
        self._targets: dict[str, _Target] = {}
        self._failing: set[str] = set()
        self.scrapes = 0

    async def run(self) -> None:
        """Scrape every endpoint (present and future) until cancelled."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        try:
            while True:
                self._tick(loop)
                due += self._interval
                delay = due - loop.time()
                if delay < 0:  # the loop fell behind: don't burst to catch up
                    due = loop.time()
                    delay = 0.0
                await asyncio.sleep(delay)
        finally:
            for target in list(self._targets.values()):
                self._drop(target)
            self._targets.clear()
            self._failing.clear()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        targets = self._targets
        for endpoint in self._datastore:
            target = targets.get(endpoint.address)
            if target is None or target.endpoint is not endpoint:
                if target is not None:  # replaced under the same address
                    self._drop(target)
                request = request_bytes(join_host_port(endpoint.ip, endpoint.port), METRICS_PATH)
                target = _Target(endpoint, request)
                targets[endpoint.address] = target
            if target.started:
                if now - target.started >= self._timeout:
                    self._abandon(target)
                    self._failed(target, TimeoutError(f"no answer within {self._timeout:g} s"))
                continue
            self._begin(target, now, loop)
        if len(targets) > len(self._datastore):  # endpoints left the pool
            for address in [a for a in targets if self._datastore.get(a) is None]:
                self._drop(targets.pop(address))

    def _begin(self, target: _Target, now: float, loop: asyncio.AbstractEventLoop) -> None:
        self.scrapes += 1
        target.started = now
        connection = target.connection
        if connection is not None and not connection.closed:
            _send(target, connection)
        else:
            target.connection = None
            target.connecting = loop.create_task(self._connect(target, loop))

    async def _connect(self, target: _Target, loop: asyncio.AbstractEventLoop) -> None:
        endpoint = target.endpoint
        answered = self._on_answer(target)
        try:
            _, connection = await loop.create_connection(
                lambda: Connection(answered), endpoint.ip, endpoint.port
            )
        except OSError as exc:
            target.connecting = None
            target.started = 0.0
            self._failed(target, exc)
            return
        target.connecting = None
        if not target.started or self._targets.get(endpoint.address) is not target:
            connection.close()  # abandoned or dropped meanwhile
            return
        target.connection = connection
        try:
            _send(target, connection)
        except Exception:  # a bug, not a bad answer: counted, logged once, scraping goes on
            target.started = 0.0
            connection.close()
            self._unexpected(endpoint, "metrics scrape")

    def _on_answer(self, target: _Target) -> Callable[[Connection, Response | BaseException], None]:
        def answered(connection: Connection, outcome: Response | BaseException) -> None:
            if target.connection is connection and target.started:
                target.started = 0.0
                self._answered(target, outcome)

        return answered

    def _answered(self, target: _Target, outcome: Response | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self._failed(target, outcome)
            return
        if outcome.status != 200:
            self._failed(target, MetricsParseError(f"HTTP {outcome.status}"))
            return
        body, endpoint = outcome.body, target.endpoint
        # Aged from when its answer came; but a request routed while the answer was on its way is not
        # in it, and counts as routed since its sending (Metrics.sent_at, Endpoint.estimated_loads).
        if target.last_metrics is not None and body == target.last_body:
            metrics = dataclasses.replace(target.last_metrics, updated_at=time.monotonic())
        else:
            try:
                metrics = parse_vllm_metrics(body.decode("utf-8", "replace"), time.monotonic())
            except MetricsParseError as exc:
                self._failed(target, exc)
                return
            except Exception:
                self._unexpected(endpoint, "metrics scrape")
                return
            target.last_body, target.last_metrics = body, metrics
        metrics.sent_at = target.sent_at
        metrics.own_at = target.own_at
        if endpoint.address in self._failing:
            self._failing.discard(endpoint.address)
            log.info("metrics scrape of %s (%s) recovered", endpoint.address, endpoint.name)
        stored = self._datastore.set_metrics(endpoint, metrics)
        if stored and self._ejector is not None:
            self._ejector.scrape_succeeded(endpoint)

    def _failed(self, target: _Target, exc: BaseException) -> None:
        endpoint = target.endpoint
        if self._targets.get(endpoint.address) is not target:
            return  # it left the pool meanwhile
        self._count_error()
        why = str(exc) or type(exc).__name__
        if endpoint.address not in self._failing:
            self._failing.add(endpoint.address)
            log.warning(
                "metrics scrape of %s (%s) failing: %s; its metrics go stale",
                endpoint.address, endpoint.name, why,
            )
        if self._ejector is not None:
            self._ejector.scrape_failed(endpoint, why, timed_out=isinstance(exc, TimeoutError))

    def _abandon(self, target: _Target) -> None:
        """Give up the scrape under way: its connection (or connection attempt) is closed."""
        target.started = 0.0
        if target.connecting is not None:
            target.connecting.cancel()
            target.connecting = None
        if target.connection is not None:
            target.connection.close()
            target.connection = None

    def _drop(self, target: _Target) -> None:
        self._abandon(target)
        self._failing.discard(target.endpoint.address)
        self._forget(target.endpoint)
