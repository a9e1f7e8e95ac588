"""End to end with API keys: a real Envoy, the BBR as the front door in both routing modes, the EPP
behind it and simulated vLLM pods. A stranger is refused, a tenant gets only its models, at its rate,
and no key reaches a pod, a log line or a metric."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from epp.cli import BbrSettings, EppSettings, serve_bbr, serve_epp

import vllmsim
from onebox.envoy import EnvoyProcess, PoolRoute, gateway_config
from tests.epp.gateway_support import (
    LOCAL as LOCAL_SERVERS,
)
from tests.epp.gateway_support import (
    pods,
    serving,
    unified_behind_front_door,
    until_gauges,
    wait_ready,
    write_endpoints,
)

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"
KEY_A = "sk-team-a-0123456789abcdefghijklmnop"
KEY_B = "sk-team-b-0123456789abcdefghijklmnop"
LOCAL: dict[str, Any] = {**LOCAL_SERVERS, "log_level": "debug"}
# team-a: Gemma only, 2 requests per 2 s window; team-b: every model, no limit.
KEYS = [
    {"name": "team-a", "key": KEY_A, "models": [GEMMA], "requestsPerMinute": 2},
    {"name": "team-b", "key": KEY_B},
]


def write_keys(path: Path, entries: list[dict[str, Any]]) -> None:
    staging = path.with_suffix(".tmp")
    staging.write_text(yaml.safe_dump(entries))
    staging.replace(path)


@dataclass
class Gateway:
    url: str
    sims: dict[str, vllmsim.Simulator]
    bbr_metrics: int
    epp_metrics: int
    envoy: EnvoyProcess
    keys_file: Path


@asynccontextmanager
async def closed_gateway(mode: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    keys_file = tmp_path / "api-keys.yaml"
    write_keys(keys_file, KEYS)
    bbr_settings = BbrSettings(served_models=(GEMMA, PHI), api_keys_file=keys_file, rate_limit_window=2.0,
                               **LOCAL)
    async with pods(("gemma-0", GEMMA), ("phi-0", PHI)) as sims:
        endpoints = tmp_path / "pool.yaml"
        write_endpoints(endpoints, sims)
        async with (
            serving(serve_bbr, bbr_settings) as bbr,
            serving(serve_epp, EppSettings(endpoints_file=endpoints, **LOCAL)) as epp,
        ):
            await asyncio.gather(wait_ready(bbr.health), wait_ready(epp.health))
            if mode == "per-model-pools":
                pool = PoolRoute(name="all", models=(GEMMA, PHI), epp=f"127.0.0.1:{epp.grpc}")
                config = gateway_config(bbr=f"127.0.0.1:{bbr.grpc}", pools=[pool])
            else:
                config = unified_behind_front_door(bbr=f"127.0.0.1:{bbr.grpc}", epp=f"127.0.0.1:{epp.grpc}")
            async with EnvoyProcess(config, log_level="info") as envoy, aiohttp.ClientSession() as session:
                await until_gauges(session, epp.metrics, lambda g: len(g) == 2 and 0 not in g.values())
                yield Gateway(envoy.url, sims, bbr.metrics, epp.metrics, envoy, keys_file)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def complete(
    session: aiohttp.ClientSession, url: str, model: str, headers: dict[str, str], **extra: Any
) -> tuple[int, dict[str, str], Any]:
    body = {"model": model, "prompt": "hello", "max_tokens": 3, **extra}
    async with session.post(f"{url}/v1/completions", json=body, headers=headers) as response:
        text = await response.text()
        document = text if extra.get("stream") else await response.json(content_type=None)
        return response.status, dict(response.headers), document


async def models_of(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> list[str]:
    async with session.get(f"{url}/v1/models", headers=headers) as response:
        assert response.status == 200
        return [m["id"] for m in (await response.json())["data"]]


async def metrics(session: aiohttp.ClientSession, port: int) -> str:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        return await response.text()


def sample(exposition: str, name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in exposition.splitlines():
        if line.startswith(name + "{") and all(w in line for w in wanted):
            return float(line.rpartition(" ")[2])
    return 0.0


@pytest.mark.parametrize("mode", ["per-model-pools", "unified-pool"])
async def test_a_closed_gateway_lets_only_tenants_in_to_their_models_at_their_rate(
    mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with closed_gateway(mode, tmp_path) as gateway, aiohttp.ClientSession() as session:
        url = gateway.url

        # Strangers: no key, a wrong key, a key in the wrong header scheme. The same 401 every time.
        refusals = [
            await complete(session, url, PHI, {}),
            await complete(session, url, PHI, bearer(KEY_A + "-wrong")),
            await complete(session, url, PHI, {"Authorization": f"Basic {KEY_B}"}),
        ]
        for status, headers, document in refusals:
            assert status == 401, document
            assert headers["WWW-Authenticate"] == "Bearer"
            assert document["error"]["type"] == "authentication_error"
        assert len({str(document) for _, _, document in refusals}) == 1
        async with session.get(f"{url}/v1/models") as response:
            assert response.status == 401

        # A tenant: answered, streamed and not, by the right pod.
        status, headers, document = await complete(session, url, PHI, bearer(KEY_B))
        assert status == 200, document
        assert headers["x-inference-pod"] == "phi-0"
        stream = {"stream": True, "stream_options": {"include_usage": True}}
        status, headers, text = await complete(session, url, PHI, {"x-api-key": KEY_B}, **stream)
        assert status == 200
        assert text.rstrip().endswith("data: [DONE]")

        # Its models only.
        assert await models_of(session, url, bearer(KEY_A)) == [GEMMA]
        assert await models_of(session, url, bearer(KEY_B)) == [GEMMA, PHI]
        status, _, document = await complete(session, url, PHI, bearer(KEY_A))
        assert status == 404  # exactly as a model that does not exist: no model oracle
        assert document["error"]["type"] == "not_found_error"
        assert document["error"]["message"] == f"The model '{PHI}' does not exist. Models served: {GEMMA}."

        # That refusal counted against team-a's rate (decided on the headers, before any body):
        # a full window later its burst of 2 is whole again.
        await asyncio.sleep(2.0)

        # Its rate: 2 per window, then a 429 saying when to come back, then let in again.
        first = [await complete(session, url, GEMMA, bearer(KEY_A)) for _ in range(2)]
        assert [status for status, _, _ in first] == [200, 200]
        status, headers, document = await complete(session, url, GEMMA, bearer(KEY_A))
        assert status == 429, document
        assert document["error"]["type"] == "rate_limit_exceeded"
        retry_after = int(headers["Retry-After"])
        await asyncio.sleep(retry_after)
        status, _, document = await complete(session, url, GEMMA, bearer(KEY_A))
        assert status == 200, document

        # What the pods received: the tenant's name, never a key header.
        received = [h for sim in gateway.sims.values() for h in sim.received_headers]
        assert len(received) == 5
        assert all("authorization" not in h and "x-api-key" not in h for h in received)
        assert sorted(h["x-gateway-api-key-name"] for h in received) == ["team-a"] * 3 + ["team-b"] * 2

        # What a platform team bills by: requests at the front door, tokens behind it, per key name.
        bbr = await metrics(session, gateway.bbr_metrics)
        epp = await metrics(session, gateway.epp_metrics)
        assert sample(bbr, "bbr_api_key_requests_total", api_key_name="team-a", outcome="routed") == 3
        assert sample(bbr, "bbr_api_key_requests_total", api_key_name="team-a", outcome="rate_limited") == 1
        assert sample(bbr, "bbr_api_key_requests_total", api_key_name="_none", outcome="no_key") == 3
        assert sample(bbr, "bbr_api_key_requests_total", api_key_name="_unknown", outcome="bad_key") == 1
        # team-b: 3 completion tokens streamed and 3 not; team-a: 3 answers of 3.
        assert sample(epp, "epp_api_key_tokens_total", api_key_name="team-b", model=PHI,
                      kind="completion") == 6
        assert sample(epp, "epp_api_key_tokens_total", api_key_name="team-a", model=GEMMA,
                      kind="completion") == 9

        # A revoked key is refused within 2 s, with no restart.
        write_keys(gateway.keys_file, KEYS[:1])
        async with asyncio.timeout(2):
            while (await complete(session, url, PHI, bearer(KEY_B)))[0] != 401:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        envoy_log = "\n".join(gateway.envoy.log_tail)

    lines = [record.getMessage() + " " + repr(record.__dict__) for record in caplog.records]
    assert any("request refused" in line for line in lines)  # the run did log its refusals
    for text in [*lines, envoy_log, bbr, epp]:
        assert KEY_A not in text
        assert KEY_B not in text
