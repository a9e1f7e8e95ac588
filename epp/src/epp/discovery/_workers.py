"""One background task per endpoint, started when the endpoint appears and cancelled when it goes.

The model prober and the metrics scraper both follow the datastore's membership this way, so a
slow or dead endpoint only ever delays its own task; :class:`EndpointPoller` is their shared base
(HTTP session, interval, timeout, error counting, one worker per endpoint).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, TypeVar

import aiohttp

from epp.datastore import Datastore, Endpoint

log = logging.getLogger(__name__)

Worker = Callable[[Endpoint], Coroutine[Any, Any, None]]
ErrorCallback = Callable[[str], None]
T = TypeVar("T")

POLL_ERRORS = (aiohttp.ClientError, TimeoutError, ValueError)
"""What a failed poll raises: transport errors, timeouts and bad answers (ValueError subclasses)."""


class EndpointWorkers:
    """Runs ``worker(endpoint)`` as a task for every endpoint in the datastore while started."""

    def __init__(self, datastore: Datastore, worker: Worker, name: str) -> None:
        self._datastore = datastore
        self._worker = worker
        self._name = name
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False
        self._subscribed = False

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

    def _on_change(self, address: str, endpoint: Endpoint | None) -> None:
        if not self._running:
            return
        if endpoint is None:
            task = self._tasks.pop(address, None)
            if task is not None:
                task.cancel()
        elif address not in self._tasks:
            self._spawn(endpoint)

    def _spawn(self, endpoint: Endpoint) -> None:
        address = endpoint.address
        task = asyncio.get_running_loop().create_task(self._worker(endpoint), name=f"{self._name}:{address}")
        self._tasks[address] = task
        task.add_done_callback(lambda done: self._finished(address, done))

    def _finished(self, address: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(address) is task:
            del self._tasks[address]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s task for %s crashed", self._name, address, exc_info=task.exception())


def endpoint_url(endpoint: Endpoint, path: str) -> str:
    """``http://ip:port/path`` of the endpoint itself (IPv6 addresses bracketed)."""
    host = f"[{endpoint.ip}]" if ":" in endpoint.ip else endpoint.ip
    return f"http://{host}:{endpoint.port}{path}"


class EndpointPoller(ABC):
    """Polls an HTTP path of every endpoint in the datastore, each from its own :meth:`_follow` task.

    ``errors`` counts failed polls (each also reported as ``on_error(name)``).
    """

    name: ClassVar[str]

    def __init__(
        self,
        datastore: Datastore,
        session: aiohttp.ClientSession,
        interval: float,
        timeout: float,
        on_error: ErrorCallback | None,
        task_name: str,
    ) -> None:
        self._datastore = datastore
        self._session = session
        self._interval = interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._on_error = on_error
        self._workers = EndpointWorkers(datastore, self._follow, task_name)
        self.errors = 0

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

    def _count_error(self) -> None:
        self.errors += 1
        if self._on_error is not None:
            self._on_error(self.name)
