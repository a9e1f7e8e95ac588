"""Readiness probes for the one box's children; each answers "ready yet?" without raising.

- simulators: HTTP ``GET /health`` answers 200;
- EPP and BBR: gRPC ``grpc.health.v1.Health/Check`` for service ``readiness`` is SERVING;
- Envoy: admin ``GET /ready`` answers 200 (every listener and cluster initialised).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

Probe = Callable[[], Awaitable[bool]]


def http_ok(url: str, timeout: float = 1.0, *, uds: str | None = None) -> Probe:
    """Ready when ``GET url`` answers 200 (asked over the Unix socket ``uds`` if given)."""

    async def probe() -> bool:
        try:
            transport = httpx.AsyncHTTPTransport(uds=uds) if uds is not None else None
            async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    return probe


def grpc_serving(address: str, service: str = "readiness", timeout: float = 1.0) -> Probe:
    """Ready when the gRPC health service at ``address`` reports ``service`` SERVING."""

    async def probe() -> bool:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            except grpc.aio.AioRpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return probe


async def until_ready(probe: Probe, within: float, interval: float = 0.05) -> None:
    """Return once ``probe`` answers True; TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not await probe():  # noqa: ASYNC110 - polling a remote service, no event to wait on
            await asyncio.sleep(interval)
