"""The real data plane on 127.0.0.1 for end-to-end tests: vllmsim pods, EPP/BBR servers, Envoy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from epp.cli import EppSettings, ServerSettings, ServingPorts, serve_epp

import vllmsim
from onebox.envoy import EnvoyProcess, ResponseMode, unified_gateway_config
from onebox.probes import grpc_serving, until_ready

Settings = TypeVar("Settings", bound=ServerSettings)

# Server settings for tests: loopback, any free ports, a short shutdown grace.
LOCAL: dict[str, Any] = {
    "bind": "127.0.0.1", "grpc_port": 0, "health_port": 0, "metrics_port": 0,
    "log_level": "warning", "grace": 1.0,
}


@asynccontextmanager
async def serving(
    serve: Callable[[Settings, asyncio.Event, asyncio.Future[ServingPorts]], Coroutine[Any, Any, None]],
    settings: Settings,
) -> AsyncIterator[ServingPorts]:
    """Run ``serve_epp``/``serve_bbr`` in this loop until the block exits."""
    stop = asyncio.Event()
    bound: asyncio.Future[ServingPorts] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, stop, bound))
    try:
        waiters: set[asyncio.Future[Any]] = {task, bound}
        done, _ = await asyncio.wait(waiters, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            raise RuntimeError("server exited before serving")
        if not done:
            raise TimeoutError("server did not start within 10 s")
        yield bound.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def wait_ready(health_port: int) -> None:
    """Until the server's gRPC readiness says SERVING (at most 10 s)."""
    await until_ready(grpc_serving(f"127.0.0.1:{health_port}"), within=10)


@asynccontextmanager
async def pods(*specs: tuple[str, str]) -> AsyncIterator[dict[str, vllmsim.Simulator]]:
    """Instant simulators, one per ``(pod name, model)``."""
    async with _pods(list(specs)) as running:
        yield running


@asynccontextmanager
async def _pods(specs: list[tuple[str, str]]) -> AsyncIterator[dict[str, vllmsim.Simulator]]:
    if not specs:
        yield {}
        return
    name, model = specs[0]
    config = vllmsim.SimConfig(models=[model], pod_name=name, time_scale=0, seed=1)
    async with vllmsim.running(config) as sim, _pods(specs[1:]) as rest:
        yield {name: sim, **rest}


def write_endpoints(path: Path, sims: dict[str, vllmsim.Simulator]) -> None:
    """The static endpoints file (written atomically: the EPP re-reads it on change)."""
    endpoints = [{"name": name, "address": "127.0.0.1", "port": sim.port} for name, sim in sims.items()]
    staging = path.with_suffix(".tmp")
    staging.write_text(yaml.safe_dump({"endpoints": endpoints}))
    staging.replace(path)


async def endpoint_gauges(session: aiohttp.ClientSession, metrics_port: int) -> dict[str, float]:
    """``epp_endpoint_models`` by pod name, from the EPP's /metrics."""
    async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
        text = await response.text()
    models: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("epp_endpoint_models{"):
            labels, _, value = line.rpartition(" ")
            name = labels.split('name="', 1)[1].split('"', 1)[0]
            models[name] = float(value)
    return models


async def until_gauges(
    session: aiohttp.ClientSession, metrics_port: int, condition: Callable[[dict[str, float]], object]
) -> None:
    """Until ``condition(endpoint_gauges(...))`` holds (at most 10 s)."""
    async with asyncio.timeout(10):
        while not condition(await endpoint_gauges(session, metrics_port)):  # noqa: ASYNC110 - polls the EPP
            await asyncio.sleep(0.05)


@asynccontextmanager
async def unified_gateway(
    settings: EppSettings, pods: int
) -> AsyncIterator[tuple[ServingPorts, EnvoyProcess, aiohttp.ClientSession]]:
    """An EPP (``settings``) behind a unified-pool Envoy, once the models of all ``pods`` are known;
    yields the EPP's ports, Envoy and a client session."""
    async with serving(serve_epp, settings) as epp:
        await wait_ready(epp.health)
        async with (
            EnvoyProcess(unified_gateway_config(epp=f"127.0.0.1:{epp.grpc}")) as envoy,
            aiohttp.ClientSession() as session,
        ):
            await until_gauges(session, epp.metrics, lambda g: len(g) == pods and 0 not in g.values())
            yield epp, envoy, session


def unified_behind_front_door(
    *, bbr: str, epp: str, response_mode: ResponseMode = "streamed"
) -> dict[str, Any]:
    """The unified-pool gateway with the BBR in front as its front door (``unified_gateway_config``'s
    ``bbr``), as the one box runs it with API keys."""
    return unified_gateway_config(epp=epp, bbr=bbr, response_mode=response_mode)
