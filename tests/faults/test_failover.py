"""``kill -9`` of one EPP replica (of two) and one BBR replica (of two) under load.

The gpu box with two EPPs per pool and two BBRs; 8 clients for a few seconds while one replica is
killed and the supervisor restarts it. Every request that failed was one of the streams the
replica had open at that instant or that Envoy gave it, or tried to, before it took the replica out
of rotation; none sent a second after the kill failed; no answer that had
begun was cut (the EPP is done with a stream at its response headers); no answer named another
model; and once the replica is back, every request is routed right.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from onebox import failover
from onebox.box import OneBox
from onebox.topology import load_preset

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def box() -> AsyncIterator[OneBox]:
    logging.getLogger("onebox.supervisor").setLevel(logging.ERROR)
    async with OneBox(load_preset("gpu"), epp_replicas=2, bbr_replicas=2, time_scale=0.5) as box:
        yield box


async def until_healthy_in_envoy(box: OneBox, replica: str, within: float = 30.0) -> None:
    async with failover.admin_client(box) as session, asyncio.timeout(within):
        while not await failover.replica_healthy(box, replica, session):  # noqa: ASYNC110 - polling Envoy
            await asyncio.sleep(0.1)


async def all_routed_right(box: OneBox, requests: int = 40) -> list[failover.Exchange]:
    models = box.topology.served_names
    async with aiohttp.ClientSession() as session:
        return await asyncio.gather(
            *(failover.send_chat(session, box.gateway_url, models[i % 2], i % 4 == 0, 4, 0.0)
              for i in range(requests))
        )  # fmt: skip


KILLS = [("epp-gemma-0", True), ("epp-gemma-0", False), ("bbr-0", True)]


async def test_each_epp_replica_knows_how_many_replicas_serve_its_pool(box: OneBox) -> None:
    # A prefix new to one replica goes home, where the other may have sent it (prefix-affinity-scorer).
    for replicas in box.epps.values():
        for epp in replicas:
            argv = list(epp.child.spec.argv({}))
            assert argv[argv.index("--replicas") + 1] == "2"


@pytest.mark.parametrize(("replica", "stream"), KILLS)
async def test_killing_one_replica_fails_at_most_its_open_streams_and_routes_every_other_request_right(
    box: OneBox, replica: str, stream: bool
) -> None:
    result = await failover.failover(box, replica, stream=stream, concurrency=8, seconds=5, kill_after=1.5)
    print(result)
    assert result.restarts >= 1  # a busy machine may restart it twice (readiness deadline)
    assert len(result.failures) <= result.in_flight_at_kill
    assert result.late_failures == []
    assert result.cut == []
    assert result.misrouted == []
    assert len(result.exchanges) > 50
    await until_healthy_in_envoy(box, replica)
    after = await all_routed_right(box)
    assert [e for e in after if not e.ok] == []
    assert {e.pod for e in after if e.model == "google/gemma-2b-it"} == {"gemma-0"}
