"""One running simulator instance: the engine, its metrics and the aiohttp server around them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from epp.contract import url_host

from vllmsim.api import build_app
from vllmsim.config import SimConfig
from vllmsim.state import SimState


class Simulator(SimState):
    """A simulated vLLM server. Use ``running(config)``, or ``start()``/``stop()`` yourself."""

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        self.port = config.port
        self._runner: web.AppRunner | None = None
        self._ready_timer: asyncio.TimerHandle | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8001`` (IPv6 hosts are bracketed)."""
        return f"http://{url_host(self.config.host)}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; ready (``/health`` 200) once ``startup_delay`` real seconds have passed."""
        runner = web.AppRunner(
            build_app(self), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        if not self.config.pod_name:
            self.pod_name = f"vllmsim-{self.port}"
        if self.config.startup_delay > 0:
            self._ready_timer = asyncio.get_running_loop().call_later(
                self.config.startup_delay, self._become_ready
            )
        else:
            self._become_ready()

    def _become_ready(self) -> None:
        self.ready = True
        self._ready_timer = None

    async def stop(self) -> None:
        if self._ready_timer is not None:
            self._ready_timer.cancel()
            self._ready_timer = None
        self.ready = False
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


@asynccontextmanager
async def running(config: SimConfig) -> AsyncIterator[Simulator]:
    """Serve ``config`` for the duration of the block: ``async with running(cfg) as sim: sim.url``."""
    sim = Simulator(config)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()
