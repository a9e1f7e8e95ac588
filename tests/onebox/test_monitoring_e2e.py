"""The one box with its Prometheus: every dashboard panel's query returns series from the real
children, and a model whose only pod stops fires ModelHasNoReadyPod, which resolves once it is back.

Loopback only; every wait is bounded. Needs ``prometheus`` on PATH (``apt-get install prometheus``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import yaml

from monitoring.definitions import ModelCost, Settings, panels
from onebox import faults
from onebox.box import OneBox
from onebox.envoy.limits import GatewayTimeouts
from onebox.prometheus import BOX_SETTINGS, BoxPrometheus, alerts, query
from onebox.topology import load_preset

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"
KEY = "sk-box-monitoring-0123456789abcdefghij"
NO_READY_POD = "ModelHasNoReadyPod"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def box(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OneBox]:
    keys = Path(tmp_path_factory.mktemp("keys")) / "api-keys.yaml"
    keys.write_text(yaml.safe_dump([{"name": "team-a", "key": KEY}]))
    monitoring = BoxPrometheus()
    async with OneBox(
        load_preset("gpu"), time_scale=0, api_keys=keys, monitoring=monitoring,
        timeouts=GatewayTimeouts(upstream_idle=2.0),
    ) as box:  # fmt: skip
        yield box


def _client(box: OneBox) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {KEY}"}
    return httpx.AsyncClient(base_url=box.gateway_url, timeout=5.0, headers=headers)


async def _chat(client: httpx.AsyncClient, model: str, stream: bool = False) -> int:
    messages = [{"role": "user", "content": "hi"}]
    body = {"model": model, "messages": messages, "max_tokens": 4, "stream": stream}
    try:
        return (await client.post("/v1/chat/completions", json=body)).status_code
    except httpx.HTTPError:
        return 0


async def test_every_dashboard_panel_query_returns_series(box: OneBox) -> None:
    assert box.monitoring is not None
    # At the default answer check rate (0.1) 100 answers per model miss the check with p = 0.9^100.
    async with _client(box) as client:
        for _ in range(10):
            statuses = await asyncio.gather(
                *(_chat(client, model, stream=i % 2 == 0) for model in (GEMMA, PHI) for i in range(10))
            )
            assert set(statuses) == {200}
    costs = (ModelCost(GEMMA, 1, 0.35), ModelCost(PHI, 1, 0.35))
    settings = Settings(window=BOX_SETTINGS.window, costs=costs)
    queries = [q.expr for panel in panels(settings) for q in panel.queries]
    empty: list[str] = queries
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient(timeout=10.0) as prometheus:
        while empty and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            empty = [q for q in queries if not await query(prometheus, box.monitoring.url, q)]
    assert empty == [], f"panel queries with no series: {empty}"


async def _state(url: str, model: str) -> str | None:
    async with httpx.AsyncClient(timeout=5.0) as prometheus:
        held = await alerts(prometheus, url)
    states = [a["state"] for a in held if a["labels"].get("alertname") == NO_READY_POD
              and a["labels"].get("model") == model]
    return states[0] if states else None


async def test_a_model_whose_only_pod_stops_fires_no_ready_pod_and_resolves_once_it_is_back(
    box: OneBox,
) -> None:
    assert box.monitoring is not None
    url = box.monitoring.url
    assert await _state(url, GEMMA) is None
    pod = next(p for p in box.pods if p.model == GEMMA)
    assert pod.pid is not None
    stop = asyncio.Event()

    async def traffic() -> None:
        async with _client(box) as client:
            while not stop.is_set():
                await asyncio.gather(_chat(client, GEMMA), asyncio.sleep(0.5))

    sender = asyncio.ensure_future(traffic())
    try:
        async with faults.stopped(pod.pid):
            stopped_at = time.monotonic()
            while await _state(url, GEMMA) != "firing":
                # ejection (a few failed scrapes), the rule's 30 s window and its 10 s `for`, with slack
                assert time.monotonic() - stopped_at < 60, "ModelHasNoReadyPod did not fire"
                await asyncio.sleep(1.0)
            fired_after = time.monotonic() - stopped_at
        continued_at = time.monotonic()
        while await _state(url, GEMMA) is not None:
            assert time.monotonic() - continued_at < 60, "ModelHasNoReadyPod did not resolve"
            await asyncio.sleep(1.0)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
    print(f"fired {fired_after:.1f} s after the stop, resolved {time.monotonic() - continued_at:.1f} s after")
    assert await _state(url, PHI) is None  # the other model was never without a pod

