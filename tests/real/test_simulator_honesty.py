"""vllmsim against the real server on the same requests: what the EPP relies on must be the same.

If vLLM changes its /v1/models cards, the metric names or labels the EPP reads, or its error body,
this fails here instead of in a production pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from epp.discovery import vllm_metrics
from epp.discovery.models import parse_model_list

from onebox import children
from onebox.box import OneBox
from onebox.supervisor import Supervisor
from tests.real.conftest import LORA, A, chat, scrape, server

pytestmark = [pytest.mark.real, pytest.mark.asyncio(loop_scope="session")]

# The metrics the EPP's parser reads, and the label names it reads from each.
EPP_READS: dict[str, set[str]] = {
    vllm_metrics.WAITING: {"model_name", "engine"},
    vllm_metrics.RUNNING: {"model_name", "engine"},
    vllm_metrics.KV_CACHE_USAGE: {"model_name", "engine"},
    vllm_metrics.LORA_INFO: {"running_lora_adapters", "waiting_lora_adapters", "max_lora"},
    vllm_metrics.CACHE_CONFIG_INFO: {"block_size", "num_gpu_blocks"},
}


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def urls(vllm_box: OneBox) -> AsyncIterator[dict[str, str]]:
    """The real server of tiny/a and a simulator configured like it: which -> base URL."""
    supervisor = Supervisor()
    try:
        args = ["--model", A, "--lora", f"{LORA}={A}", "--time-scale", "0"]
        child = await supervisor.launch(children.simulator("vllmsim", "127.0.0.1", args))
        ports = await supervisor.wait_ready(child, within=30)
        yield {"real": server(vllm_box, A).url, "sim": f"http://127.0.0.1:{ports['http']}"}
    finally:
        await supervisor.stop()


async def test_the_model_cards_have_the_same_fields(urls: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        listed = {k: (await client.get(f"{u}/v1/models")).json() for k, u in urls.items()}
    shape = {
        k: {"top": set(v), "cards": {card["id"]: set(card) for card in v["data"]}} for k, v in listed.items()
    }
    assert shape["sim"] == shape["real"]
    assert parse_model_list(listed["sim"]) == parse_model_list(listed["real"]) == (
        frozenset({A, LORA}), {LORA: A},
    )  # fmt: skip


async def test_the_metrics_the_epp_reads_have_the_same_names_and_labels(urls: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        pages = {k: await scrape(client, f"{u}/metrics") for k, u in urls.items()}
        real_text = (await client.get(f"{urls['real']}/metrics")).text
    for name, read in EPP_READS.items():
        labels = {k: set().union(*(set(lab) for lab, _ in page.get(name, []))) for k, page in pages.items()}
        assert name in pages["real"], f"the real server no longer exposes {name}"
        assert name in pages["sim"], f"the simulator does not expose {name}"
        assert read <= labels["real"], f"{name}: the real server lost labels {read - labels['real']}"
        assert labels["sim"] & read == labels["real"] & read, name
    # The name the EPP falls back to for old servers is gone from this version (it reads the new one).
    assert vllm_metrics.GPU_CACHE_USAGE not in pages["real"]
    parsed = vllm_metrics.parse_vllm_metrics(real_text, now=0.0)
    config = pages["real"][vllm_metrics.CACHE_CONFIG_INFO][0][0]
    assert (parsed.block_size, parsed.num_gpu_blocks) == (
        int(config["block_size"]),
        int(config["num_gpu_blocks"]),
    )
    assert parsed.max_loras == 1


async def test_an_unknown_model_gets_the_same_error_shape(urls: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        answers = {
            k: await client.post(f"{u}/v1/chat/completions", json=chat("meta/llama-9000"))
            for k, u in urls.items()
        }
    errors = {k: a.json()["error"] for k, a in answers.items()}
    assert {k: a.status_code for k, a in answers.items()} == {"real": 404, "sim": 404}
    assert set(errors["sim"]) == set(errors["real"])
    for field in ("type", "param", "code"):
        assert errors["sim"][field] == errors["real"][field], field
    assert all("meta/llama-9000" in e["message"] for e in errors.values())
