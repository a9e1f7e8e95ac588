"""The one box end to end: real Envoy, BBR, EPPs and simulators on 127.0.0.1."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from epp.contract import MODEL_HEADER

from onebox.box import OneBox
from onebox.envoy.phases import phase_summary, read_phases, wait_for_served
from onebox.topology import load_preset
from tests.onebox.procs import alive

pytestmark = pytest.mark.envoy

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"


def chat(model: str | None, max_tokens: int = 2) -> dict[str, object]:
    body: dict[str, object] = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens}
    if model is not None:
        body["model"] = model
    return body


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gpu_box() -> AsyncIterator[OneBox]:
    with tempfile.TemporaryDirectory(prefix="box-phases-") as logs:
        box = OneBox(load_preset("gpu"), time_scale=0, round_robin=True, phase_log_dir=Path(logs))
        async with box:
            yield box


@pytest_asyncio.fixture(loop_scope="module")
async def gateway(gpu_box: OneBox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gpu_box.gateway_url, timeout=10) as client:
        yield client


@pytest.mark.asyncio(loop_scope="module")
async def test_a_phi3_request_never_reaches_the_gemma_pod(gateway: httpx.AsyncClient) -> None:
    answers = await asyncio.gather(*(gateway.post("/v1/chat/completions", json=chat(PHI)) for _ in range(12)))
    assert {(a.status_code, a.json()["model"], a.headers["x-inference-pod"]) for a in answers} == {
        (200, PHI, "phi3-0")
    }


@pytest.mark.asyncio(loop_scope="module")
async def test_the_gateway_lists_every_model_of_the_topology(gateway: httpx.AsyncClient) -> None:
    listed = (await gateway.get("/v1/models")).json()
    assert sorted(m["id"] for m in listed["data"]) == sorted([GEMMA, PHI])


@pytest.mark.asyncio(loop_scope="module")
async def test_the_gateway_refuses_bad_requests_like_an_openai_server(gateway: httpx.AsyncClient) -> None:
    missing = await gateway.post("/v1/chat/completions", json=chat(None))
    unknown = await gateway.post("/v1/chat/completions", json=chat("meta/llama-9000"))
    malformed = await gateway.post("/v1/chat/completions", content=b"{not json")
    assert (missing.status_code, missing.json()["error"]["code"]) == (400, 400)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, 404)
    assert (malformed.status_code, malformed.json()["error"]["code"]) == (400, 400)


@pytest.mark.asyncio(loop_scope="module")
async def test_round_robin_over_the_same_pods_sends_half_the_requests_to_the_wrong_model(
    gpu_box: OneBox,
) -> None:
    async with httpx.AsyncClient(base_url=gpu_box.round_robin_url, timeout=10) as client:
        answers = [(await client.post("/v1/chat/completions", json=chat(GEMMA))) for _ in range(10)]
    assert sorted(a.status_code for a in answers) == [200] * 5 + [404] * 5
    assert {a.headers["x-inference-pod"] for a in answers} == {"gemma-0", "phi3-0"}


@pytest.mark.asyncio(loop_scope="module")
async def test_round_robin_told_the_model_in_a_header_stays_on_that_models_pods(gpu_box: OneBox) -> None:
    # The benchmarks' baseline: a Service per model behind a router that knows the model.
    async with httpx.AsyncClient(base_url=gpu_box.round_robin_url, timeout=10) as client:
        answers = [
            await client.post("/v1/chat/completions", json=chat(model), headers={MODEL_HEADER: model})
            for model in (GEMMA, PHI) * 4
        ]
    assert [a.status_code for a in answers] == [200] * 8
    assert [a.headers["x-inference-pod"] for a in answers] == ["gemma-0", "phi3-0"] * 4


@pytest.mark.asyncio(loop_scope="module")
async def test_the_phase_logs_show_the_gateways_ext_proc_calls_and_none_on_round_robin(
    gpu_box: OneBox,
) -> None:
    # Where the gateway's time goes, as Envoy timed it (bench.timeline --phases reads the same logs).
    await asyncio.sleep(0.5)  # the box's Envoys flush these logs every 100 ms: the other tests' lines first
    _, gateway_from = read_phases(gpu_box.phase_log("envoy"))
    _, rr_from = read_phases(gpu_box.phase_log("envoy-round-robin"))
    async with httpx.AsyncClient(timeout=10) as client:
        for url in (gpu_box.gateway_url, gpu_box.round_robin_url):
            for _ in range(3):
                answer = await client.post(f"{url}/v1/chat/completions", json=chat(GEMMA),
                                           headers={MODEL_HEADER: GEMMA})  # fmt: skip
                assert answer.status_code == 200
        await client.get(f"{gpu_box.gateway_url}/v1/models")  # answered by the gateway: not counted
    gateway, _ = await wait_for_served(gpu_box.phase_log("envoy"), gateway_from, 3)
    rr, _ = await wait_for_served(gpu_box.phase_log("envoy-round-robin"), rr_from, 3)
    through_gateway = {f.phase: f for f in phase_summary(gateway)}
    assert {"to_pod", "pod_to_headers", "headers_out", "bbr.request_headers", "bbr.request_body",
            "epp.request_headers", "epp.request_body", "epp.response_headers"} <= set(through_gateway)
    assert all(f.count == 3 for f in through_gateway.values())
    assert through_gateway["to_pod"].p50 > 0
    envoy_alone = {"body_in", "to_pod", "pod_to_headers", "headers_out", "total"}
    assert {f.phase for f in phase_summary(rr)} == envoy_alone
    assert [r.pod for r in rr] == [gpu_box.pods[0].address] * 3


@pytest.mark.asyncio(loop_scope="module")
async def test_the_box_names_its_pods_and_children(gpu_box: OneBox) -> None:
    assert [(p.name, p.model) for p in gpu_box.pods] == [("gemma-0", GEMMA), ("phi3-0", PHI)]
    assert [c.name for c in gpu_box.children] == [
        "gemma-0", "phi3-0", "bbr", "epp-gemma", "epp-phi3", "envoy", "envoy-round-robin",
    ]  # fmt: skip
    assert all(c.running for c in gpu_box.children)


async def test_the_unified_pool_serves_every_model_through_one_epp_and_stops_cleanly() -> None:
    async with OneBox(load_preset("gpu"), mode="unified-pool", time_scale=0) as box:
        assert [c.name for c in box.children] == ["gemma-0", "phi3-0", "epp", "envoy"]
        pids = [c.pid for c in box.children]
        async with httpx.AsyncClient(base_url=box.gateway_url, timeout=10) as client:
            for model, pod in ((GEMMA, "gemma-0"), (PHI, "phi3-0")):
                answers = [await client.post("/v1/chat/completions", json=chat(model)) for _ in range(4)]
                assert {(a.status_code, a.headers["x-inference-pod"]) for a in answers} == {(200, pod)}
    assert box.failure is None
    assert not any(alive(pid) for pid in pids)


async def test_a_gateway_that_shows_the_epp_every_chunk_as_gkes_does_answers_whole() -> None:
    """``response_mode="full-duplex"``: every answer's chunks pass through the EPP and come back
    unchanged, streamed or not, each model from its own pod."""
    async with OneBox(load_preset("gpu"), time_scale=0, response_mode="full-duplex") as box:
        assert box.response_mode == "full-duplex"
        async with httpx.AsyncClient(base_url=box.gateway_url, timeout=10) as client:
            for model, pod in ((GEMMA, "gemma-0"), (PHI, "phi3-0")):
                whole = await client.post("/v1/chat/completions", json=chat(model, max_tokens=8))
                assert (whole.status_code, whole.json()["model"], whole.headers["x-inference-pod"]) == (
                    200, model, pod
                )
                async with client.stream("POST", "/v1/chat/completions",
                                         json={**chat(model, max_tokens=8), "stream": True}) as streamed:
                    events = [line async for line in streamed.aiter_lines() if line.startswith("data:")]
                assert streamed.status_code == 200
                assert events[-1] == "data: [DONE]"
                assert len(events) >= 9


def test_an_unknown_response_mode_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="unknown response mode 'duplex'; modes: streamed, full-duplex"):
        OneBox(load_preset("gpu"), response_mode="duplex")  # type: ignore[arg-type]
