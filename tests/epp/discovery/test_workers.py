"""One task per endpoint: a task that dies is started again, and one for a removed endpoint is not."""

from __future__ import annotations

import asyncio

from epp.datastore import Datastore, Endpoint
from epp.discovery._workers import EndpointWorkers

from .support import eventually


async def test_a_worker_task_that_dies_is_restarted_for_its_endpoint() -> None:
    datastore = Datastore()
    runs: list[str] = []

    async def worker(endpoint: Endpoint) -> None:
        runs.append(endpoint.address)
        if len(runs) < 3:
            raise RuntimeError("a bug outside the poll loop")
        await asyncio.Event().wait()

    workers = EndpointWorkers(datastore, worker, "test", restart_delay=0.01)
    workers.start()
    try:
        endpoint = datastore.upsert(Endpoint(name="pod", ip="10.0.0.1", port=8000))
        await eventually(lambda: len(runs) == 3, what="two restarts")
        assert runs == [endpoint.address] * 3
        assert workers.restarts == 2
        assert endpoint.address in workers
    finally:
        await workers.stop()


async def test_a_dead_worker_of_a_removed_endpoint_is_not_restarted() -> None:
    datastore = Datastore()
    runs: list[str] = []
    endpoint = datastore.upsert(Endpoint(name="pod", ip="10.0.0.1", port=8000))

    async def worker(endpoint: Endpoint) -> None:
        runs.append(endpoint.address)
        datastore.remove(endpoint.address)
        raise RuntimeError("dies as its endpoint goes")

    workers = EndpointWorkers(datastore, worker, "test", restart_delay=0.01)
    workers.start()
    try:
        await eventually(lambda: runs == [endpoint.address], what="the one run")
        await asyncio.sleep(0.05)
        assert runs == [endpoint.address]
        assert endpoint.address not in workers
    finally:
        await workers.stop()
