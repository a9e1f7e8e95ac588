"""The EPP's gRPC health: a picker whose discovery has died says so, so Kubernetes restarts it."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from epp.cli import EppSettings, serve_epp
from epp.datastore import Datastore
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp import cli
from tests.epp.gateway_support import serving, wait_ready

LOCAL: dict[str, Any] = {
    "bind": "127.0.0.1", "grpc_port": 0, "health_port": 0, "metrics_port": 0,
    "log_level": "warning", "grace": 0.5,
}


async def statuses(health_port: int) -> dict[str, int]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        replies = {}
        for service in ("liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor", ""):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            replies[service] = reply.status
        return replies


async def test_when_discovery_dies_liveness_and_readiness_turn_not_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    died = asyncio.Event()

    class DiesAfterItsFirstSync:
        name = "static"
        errors = 0

        def __init__(self, datastore: Datastore) -> None:
            self.datastore = datastore

        async def run(self) -> None:
            self.datastore.synced = True
            await died.wait()
            raise RuntimeError("the watch loop hit a bug")

    monkeypatch.setattr(cli, "build_source", lambda datastore, **_: DiesAfterItsFirstSync(datastore))
    async with serving(serve_epp, EppSettings(endpoints="127.0.0.1:1", **LOCAL)) as ports:
        await wait_ready(ports.health)
        serving_now = health_pb2.HealthCheckResponse.SERVING
        assert set((await statuses(ports.health)).values()) == {serving_now}
        died.set()
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        async with asyncio.timeout(5):
            while set((await statuses(ports.health)).values()) != {not_serving}:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
