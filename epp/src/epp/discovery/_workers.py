"""One background task per endpoint, started when the endpoint appears and cancelled when it goes.

The model prober follows the datastore's membership this way, so a slow or dead endpoint only ever
delays its own task; :class:`EndpointPoller` is its base (HTTP session, interval, timeout, one worker
per endpoint) and :class:`PollErrors` the error counting it shares with the metrics scraper (which
runs no task per endpoint: ``epp.discovery.metrics``). A poll that fails in
an unexpected way (a bug, not a bad answer) is counted as ``<name>_unexpected``, logged once per
endpoint with its traceback, and polling goes on; a worker task that dies anyway is restarted.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, TypeVar

import aiohttp

from epp.contract import join_host_port
from epp.datastore import Datastore, DatastoreEvent, Endpoint, EndpointRemoved, EndpointUpserted

log = logging.getLogger(__name__)

Worker = Callable[[Endpoint], Coroutine[Any, Any, None]]
ErrorCallback = Callable[[str], None]
T = TypeVar("T")

POLL_ERRORS = (aiohttp.ClientError, TimeoutError, ValueError)
"""What a failed poll raises: transport errors, timeouts and bad answers (ValueError subclasses)."""


class EndpointWorkers:
    """Runs ``worker(endpoint)`` as a task for every endpoint in the datastore while started.

    A task that ends with an exception while its endpoint is still in the pool is logged, reported
    to ``on_crash`` and started again after ``restart_delay`` seconds (``restarts`` counts them).
    """

    def __init__(
        self,
        datastore: Datastore,
        worker: Worker,
        name: str,
        *,
        restart_delay: float = 1.0,
        on_crash: Callable[[], None] | None = None,
    ) -> None:
        self._datastore = datastore
        self._worker = worker
        self._name = name
        self._restart_delay = restart_delay
        self._on_crash = on_crash
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False
        self._subscribed = False
        self.restarts = 0

    def start(self) -> None:
        """Follow the datastore: spawn for every current endpoint and for each one added later."""
        if self._running:
            return
        self._running = True
        if not self._subscribed:
            self._datastore.subscribe(self._on_change)
            self._subscribed = True
        for endpoint in list(self._datastore):
            self._spawn(endpoint)

    async def stop(self) -> None:
        """Cancel every task and wait for them to finish."""
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __contains__(self, address: object) -> bool:
        return address in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def _on_change(self, event: DatastoreEvent) -> None:
        if not self._running:
            return
        if isinstance(event, EndpointRemoved):
            task = self._tasks.pop(event.endpoint.address, None)
            if task is not None:
                task.cancel()
        elif isinstance(event, EndpointUpserted) and event.endpoint.address not in self._tasks:
            self._spawn(event.endpoint)

    def _spawn(self, endpoint: Endpoint, delay: float = 0.0) -> None:
        address = endpoint.address
        task = asyncio.get_running_loop().create_task(
            self._run(endpoint, delay), name=f"{self._name}:{address}"
        )
        self._tasks[address] = task
        task.add_done_callback(lambda done: self._finished(address, done))

    async def _run(self, endpoint: Endpoint, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        await self._worker(endpoint)

    def _finished(self, address: str, task: asyncio.Task[None]) -> None:
        current = self._tasks.get(address) is task
        if current:
            del self._tasks[address]
        if task.cancelled() or task.exception() is None:
            return
        endpoint = self._datastore.get(address)
        restart = current and self._running and endpoint is not None
        log.error(
            "%s task for %s crashed%s", self._name, address, "; restarting it" if restart else "",
            exc_info=task.exception(),
        )
        if self._on_crash is not None:
            self._on_crash()
        if restart and endpoint is not None:
            self.restarts += 1
            self._spawn(endpoint, self._restart_delay)


def endpoint_url(endpoint: Endpoint, path: str) -> str:
    """``http://ip:port/path`` of the endpoint itself (IPv6 addresses bracketed)."""
    return f"http://{join_host_port(endpoint.ip, endpoint.port)}{path}"


class PollErrors:
    """Error counting shared by the pollers: ``errors`` counts failed polls (each also reported as
    ``on_error(name)``); a poll that fails in an unexpected way is logged once per endpoint."""

    name: ClassVar[str]

    def __init__(self, on_error: ErrorCallback | None) -> None:
        self._on_error = on_error
        self._unexpected_logged: set[str] = set()
        self.errors = 0

    def _count_error(self) -> None:
        self.errors += 1
        if self._on_error is not None:
            self._on_error(self.name)

    def _count_unexpected(self) -> None:
        self.errors += 1
        if self._on_error is not None:
            self._on_error(f"{self.name}_unexpected")

    def _unexpected(self, endpoint: Endpoint, what: str) -> None:
        """A poll of ``endpoint`` raised what no bad answer raises (a bug): count it, log it with its
        traceback the first time for this endpoint, and let polling go on. Call from ``except``."""
        self._count_unexpected()
        if endpoint.address not in self._unexpected_logged:
            self._unexpected_logged.add(endpoint.address)
            log.exception(
                "%s of %s (%s) failed unexpectedly; polling goes on, later failures are only counted",
                what, endpoint.address, endpoint.name,
            )

    def _forget(self, endpoint: Endpoint) -> None:
        """The endpoint's polling ended."""
        self._unexpected_logged.discard(endpoint.address)


class EndpointPoller(PollErrors, ABC):
    """Polls an HTTP path of every endpoint in the datastore, each from its own :meth:`_follow` task."""

    def __init__(
        self,
        datastore: Datastore,
        session: aiohttp.ClientSession,
        interval: float,
        timeout: float,
        on_error: ErrorCallback | None,
        task_name: str,
    ) -> None:
        super().__init__(on_error)
        self._datastore = datastore
        self._session = session
        self._interval = interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._workers = EndpointWorkers(datastore, self._follow, task_name, on_crash=self._count_unexpected)

    async def run(self) -> None:
        """Poll every endpoint (present and future) until cancelled."""
        self._workers.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self._workers.stop()

    @abstractmethod
    async def _follow(self, endpoint: Endpoint) -> None:
        """The polling loop of one endpoint, run until the endpoint goes or the poller stops."""

    async def _get(
        self,
        endpoint: Endpoint,
        path: str,
        read: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        error: type[ValueError],
    ) -> T:
        """``read`` of the endpoint's answer to ``GET path``; ``error`` when it is not HTTP 200."""
        async with self._session.get(endpoint_url(endpoint, path), timeout=self._timeout) as response:
            if response.status != 200:
                raise error(f"HTTP {response.status}")
            return await read(response)
