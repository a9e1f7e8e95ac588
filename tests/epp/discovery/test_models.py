"""The model prober asks each endpoint's own /v1/models and keeps the datastore's models current."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from epp.datastore import Datastore, Endpoint
from epp.discovery import ModelListError, ModelProber, parse_model_list

from .support import eventually, one_route_app, pod_appears, running, serve

GEMMA = "google/gemma-2b-it"


def model_entry(model_id: str, parent: str | None = None) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": 1732000000,
        "owned_by": "vllm",
        "root": model_id if parent is None else f"/adapters/{model_id}",
        "parent": parent,
        "max_model_len": 8192,
        "permission": [{"id": "modelperm-1", "object": "model_permission", "allow_sampling": True}],
    }


@dataclass
class FakeServer:
    """A vLLM-like /v1/models whose answer, failure and delay the test controls."""

    models: list[dict[str, Any]] = field(default_factory=lambda: [model_entry(GEMMA)])
    status: int = 200
    delay: float = 0.0
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.status != 200:
                return web.json_response({"error": {"message": "boom"}}, status=self.status)
            return web.json_response({"object": "list", "data": self.models})
        finally:
            self.in_flight -= 1

    def app(self) -> web.Application:
        return one_route_app("/v1/models", self.handle)


@asynccontextmanager
async def prober_for(
    datastore: Datastore, interval: float = 30.0, probe_timeout: float = 2.0
) -> AsyncIterator[ModelProber]:
    async with aiohttp.ClientSession() as session:
        prober = ModelProber(datastore, session, interval=interval, timeout=probe_timeout, first_retry=0.02)
        async with running(prober):
            yield prober


async def probed_pod(datastore: Datastore, port: int) -> Endpoint:
    """A pod that appears and whose first probe has answered."""
    endpoint = await pod_appears(datastore, port)
    await eventually(lambda: endpoint.models_known, what="the first probe")
    return endpoint


def test_lora_adapters_are_listed_with_their_base_model() -> None:
    body = {
        "object": "list",
        "data": [model_entry(GEMMA), model_entry("sql-lora", GEMMA), model_entry("tweet-lora", GEMMA)],
    }
    models, parents = parse_model_list(body)
    assert models == {GEMMA, "sql-lora", "tweet-lora"}
    assert parents == {"sql-lora": GEMMA, "tweet-lora": GEMMA}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([], "expected a JSON object with a 'data' list"),
        ({"data": [{"object": "model"}]}, "data[0] field 'id'"),
        ({"data": [model_entry(GEMMA), {"id": "x", "parent": 5}]}, "data[1] (x) field 'parent'"),
    ],
)
def test_a_malformed_model_list_is_rejected_with_the_reason(body: Any, expected: str) -> None:
    with pytest.raises(ModelListError) as raised:
        parse_model_list(body)
    assert expected in str(raised.value)


async def test_a_new_pod_becomes_routable_as_soon_as_its_models_are_known() -> None:
    server = FakeServer(models=[model_entry(GEMMA), model_entry("sql-lora", GEMMA)])
    datastore = Datastore()
    async with serve(server.app()) as port, prober_for(datastore):
        endpoint = await pod_appears(datastore, port)
        assert datastore.routable() == []
        await eventually(lambda: endpoint.models_known, what="the first probe")
        assert datastore.routable() == [endpoint]
        assert endpoint.serves("sql-lora")
        assert endpoint.lora_parents == {"sql-lora": GEMMA}
        assert endpoint.models - endpoint.lora_parents.keys() == {GEMMA}


async def test_endpoints_known_before_the_prober_starts_are_probed_too() -> None:
    server = FakeServer()
    datastore = Datastore()
    async with serve(server.app()) as port:
        endpoint = datastore.upsert(Endpoint(name="gemma-0", ip="127.0.0.1", port=port))
        async with prober_for(datastore):
            await eventually(lambda: endpoint.models_known, what="the first probe")
        assert endpoint.models == {GEMMA}


async def test_a_failed_probe_keeps_the_last_known_models() -> None:
    server = FakeServer()
    datastore = Datastore()
    async with serve(server.app()) as port, prober_for(datastore) as prober:
        endpoint = await probed_pod(datastore, port)
        server.status = 503
        assert prober.request_refresh(endpoint.address)
        await eventually(lambda: prober.errors == 1, what="the failed probe")
        assert endpoint.models == {GEMMA}
        assert datastore.routable() == [endpoint]


async def test_a_pod_that_never_answered_stays_unroutable_and_is_retried_until_it_does() -> None:
    server = FakeServer(status=503)
    datastore = Datastore()
    async with serve(server.app()) as port, prober_for(datastore) as prober:
        endpoint = await pod_appears(datastore, port)
        await eventually(lambda: prober.errors >= 2, what="repeated failed probes")
        assert datastore.routable() == []
        server.status = 200
        await eventually(lambda: endpoint.models_known, what="the pod to come up")
        assert datastore.served_models() == [GEMMA]


async def test_a_model_not_found_answer_refreshes_the_models_on_demand() -> None:
    server = FakeServer()
    datastore = Datastore()
    async with serve(server.app()) as port, prober_for(datastore) as prober:
        endpoint = await probed_pod(datastore, port)
        server.models = [model_entry(GEMMA), model_entry("new-lora", GEMMA)]
        version = datastore.version
        assert prober.request_refresh(endpoint.address)
        await eventually(lambda: endpoint.serves("new-lora"), what="the refreshed models")
        assert datastore.version > version
        assert not prober.request_refresh("10.9.9.9:8000")


async def test_refreshes_during_a_slow_probe_never_run_two_probes_of_one_endpoint_at_once() -> None:
    server = FakeServer(delay=0.1)
    datastore = Datastore()
    async with serve(server.app()) as port, prober_for(datastore) as prober:
        endpoint = await pod_appears(datastore, port)
        await eventually(lambda: server.in_flight == 1, what="the first probe to start")
        for _ in range(5):
            prober.request_refresh(endpoint.address)
            await asyncio.sleep(0.01)
        await eventually(lambda: server.calls >= 2 and server.in_flight == 0, what="the coalesced refresh")
        assert server.max_in_flight == 1
        assert server.calls == 2


async def test_the_models_are_asked_again_every_interval() -> None:
    server = FakeServer()
    datastore = Datastore()
    async with serve(server.app()) as port, prober_for(datastore, interval=0.05):
        await pod_appears(datastore, port)
        await eventually(lambda: server.calls >= 3, what="periodic probes")


async def test_a_removed_pod_is_no_longer_probed_and_its_probe_is_cancelled() -> None:
    server = FakeServer(delay=5.0)
    datastore = Datastore()
    async with serve(server.app()) as port, prober_for(datastore) as prober:
        endpoint = await pod_appears(datastore, port)
        await eventually(lambda: server.in_flight == 1, what="the probe to start")
        datastore.remove(endpoint.address)
        await eventually(lambda: server.in_flight == 0, what="the probe to be cancelled")
        assert not prober.request_refresh(endpoint.address)
        assert not endpoint.models_known


async def test_a_probe_that_answers_slower_than_the_timeout_counts_as_failed() -> None:
    server = FakeServer(delay=1.0)
    datastore = Datastore()
    async with serve(server.app()) as port, prober_for(datastore, probe_timeout=0.05) as prober:
        endpoint = await pod_appears(datastore, port)
        await eventually(lambda: prober.errors >= 1, what="the timeout")
        assert not endpoint.models_known
