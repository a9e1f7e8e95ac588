"""Shared helpers for the discovery tests: a throwaway aiohttp server on 127.0.0.1, a service run
in the background, a pod appearing in the datastore, and polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from aiohttp import web
from epp.datastore import Datastore, Endpoint


class Service(Protocol):
    """Anything that works from ``run()`` until cancelled (discovery sources, prober, scraper)."""

    def run(self) -> Coroutine[Any, Any, None]: ...


S = TypeVar("S", bound=Service)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[int]:
    """Run ``app`` on 127.0.0.1 on a free port; yields the port and always shuts the server down."""
    runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]
    try:
        yield port
    finally:
        await runner.cleanup()


def one_route_app(path: str, handler: Handler) -> web.Application:
    """An app answering ``GET path`` with ``handler``."""
    app = web.Application()
    app.router.add_get(path, handler)
    return app


@asynccontextmanager
async def running(service: S) -> AsyncIterator[S]:
    """Run ``service`` in a background task; yields it, then cancels the task and waits for it."""
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def pod_appears(datastore: Datastore, port: int, name: str = "gemma-0") -> Endpoint:
    """A pod on 127.0.0.1:``port`` added to ``datastore`` after one loop turn (so a service just
    started has subscribed to the datastore first)."""
    await asyncio.sleep(0)
    return datastore.upsert(Endpoint(name=name, ip="127.0.0.1", port=port))


async def eventually(condition: Callable[[], bool], within: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail the test (naming ``what``) after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
