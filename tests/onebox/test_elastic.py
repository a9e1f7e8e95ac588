"""The ``elastic`` preset end to end: a model at zero pods wakes on its first request (which waits in
the EPP's flow-control queue, no client retry) and goes back to zero after its idle period."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from onebox.box import OneBox
from onebox.topology import Autoscaling, Topology, load_preset, parse_topology
from tests.onebox.procs import alive

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

IDLE_SECONDS = 2.5
WAKE_TIMEOUT = 30.0


def short_idle(topology: Topology) -> Topology:
    """The preset with the cold model's idle period cut to a few seconds (the test stays short)."""
    models = []
    for model in topology.models:
        scaling = model.autoscaling
        if scaling is not None and scaling.min_replicas == 0:
            update = {"idle_seconds": IDLE_SECONDS, "wake_timeout": WAKE_TIMEOUT, "polling_seconds": 0.25}
            model = model.model_copy(update={"autoscaling": Autoscaling.model_validate(
                {**scaling.model_dump(), **update}
            )})  # fmt: skip
        models.append(model)
    return topology.model_copy(update={"models": models})


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "wake up"}], "max_tokens": 2}


async def wait_until(condition: object, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_cold_model_wakes_on_its_first_request_and_goes_back_to_zero_when_idle() -> None:
    topology = short_idle(load_preset("elastic"))
    [cold] = [m for m in topology.models if m.initial_replicas == 0]
    async with OneBox(topology, time_scale=0) as box, httpx.AsyncClient(
        base_url=box.gateway_url, timeout=WAKE_TIMEOUT + 10
    ) as client:
        assert box.scaler is not None
        assert box.replicas(cold) == 0

        listed = (await client.get("/v1/models")).json()
        assert cold.served_name in {m["id"] for m in listed["data"]}

        # The first request: one attempt, answered by the model once its pod is up.
        answer = await client.post("/v1/chat/completions", json=chat(cold.served_name))
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == cold.served_name
        assert answer.headers["x-inference-pod"] == f"{cold.name}-0"
        [wake] = [e for e in box.scaler.events if e.model == cold.served_name]
        assert (wake.before, wake.after) == (0, 1)
        assert wake.signals.queued >= 1  # the scaler saw the request in the EPP's queue
        [pod] = [p for p in box.pods if p.model == cold.served_name]
        assert pod.pid is not None
        pid = pod.pid

        # Idle: the pod goes, the model stays listed.
        assert await wait_until(lambda: box.replicas(cold) == 0, within=IDLE_SECONDS + 15)
        assert await wait_until(lambda: not alive(pid), within=10)
        listed = (await client.get("/v1/models")).json()
        assert cold.served_name in {m["id"] for m in listed["data"]}

        # The next request wakes it again.
        again = await client.post("/v1/chat/completions", json=chat(cold.served_name))
        assert again.status_code == 200, again.text
        assert [(e.before, e.after) for e in box.scaler.events if e.model == cold.served_name] == [
            (0, 1), (1, 0), (0, 1),
        ]  # fmt: skip
        # The warm model kept its pod throughout.
        [warm] = [m for m in topology.models if m is not cold]
        assert box.replicas(warm) == 1


async def test_a_model_slower_to_wake_than_its_wake_timeout_gets_a_503_with_retry_after_not_a_404() -> None:
    text = (
        "models:\n  - name: slow\n    served_name: tiny/slow\n    sim: {startup_delay: 4}\n"
        "    autoscaling: {minReplicas: 0, maxReplicas: 1, wakeTimeout: 1, pollingSeconds: 0.25}\n"
    )
    async with OneBox(parse_topology(text), time_scale=0) as box, httpx.AsyncClient(
        base_url=box.gateway_url, timeout=20
    ) as client:
        answer = await client.post("/v1/chat/completions", json=chat("tiny/slow"))
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["type"]
        assert int(answer.headers["retry-after"]) >= 1
        # The pod it asked for comes up; then the model answers.
        [model] = box.topology.models
        assert await wait_until(lambda: box.replicas(model) == 1, within=15)
        later = await client.post("/v1/chat/completions", json=chat("tiny/slow"))
        assert later.status_code == 200, later.text


async def test_in_the_unified_pool_the_epp_itself_lists_a_model_at_zero_pods() -> None:
    topology = short_idle(load_preset("elastic"))
    [cold] = [m for m in topology.models if m.initial_replicas == 0]
    async with (
        OneBox(topology, time_scale=0, mode="unified-pool") as box,
        httpx.AsyncClient(base_url=box.gateway_url, timeout=WAKE_TIMEOUT + 10) as client,
    ):
        assert box.replicas(cold) == 0
        listed = (await client.get("/v1/models")).json()  # answered by the EPP: no BBR in this mode
        assert {m.served_name for m in topology.models} == {m["id"] for m in listed["data"]}
        answer = await client.post("/v1/chat/completions", json=chat(cold.served_name))
        assert answer.status_code == 200, answer.text
