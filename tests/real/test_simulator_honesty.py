"""vllmsim against the real server on the same requests: what the EPP relies on must be the same.

If vLLM changes its /v1/models cards, the metric names or labels the EPP reads, its error body, or
the cached tokens its usage reports (which the EPP's prefix index learns from), this fails here
instead of in a production pool.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from epp.discovery import vllm_metrics
from epp.discovery.models import parse_model_list

from onebox import children
from onebox.box import OneBox
from onebox.supervisor import Supervisor
from tests.real.conftest import LORA, MAX_NUM_SEQS, A, chat, scrape, server

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
        args = ["--model", A, "--lora", f"{LORA}={A}", "--time-scale", "0", "--enable-prompt-tokens-details"]
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


# About 290 tokens for the tiny model's tokenizer: more than two of the CPU backend's 128-token blocks.
_SENTENCES = (
    "the gateway routes a request. the picker serves every token on the CPU. a pod answers the "
    "metrics quickly. each model lists its adapters by name. the router streams one reply in order. "
) * 7


async def _cached_tokens_story(client: httpx.AsyncClient, url: str, block_size: int) -> list[object]:
    """A prompt sent twice whole and once streamed: the three usages' prompt_tokens_details."""
    prompt = f"{uuid.uuid4().hex[:8]} {_SENTENCES}"  # never sent before, to either server
    ask = chat(A, max_tokens=2, messages=[{"role": "user", "content": prompt}])
    first, again = [(await client.post(f"{url}/v1/chat/completions", json=ask)).json()["usage"] for _ in "12"]
    streamed = {**ask, "stream": True, "stream_options": {"include_usage": True}}
    text = (await client.post(f"{url}/v1/chat/completions", json=streamed)).text
    events = [line[6:] for line in text.splitlines() if line.startswith("data: {")]
    event = json.loads(events[-1])["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0, url
    for usage in (again, event):
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        assert cached > 0, url
        assert cached % block_size == 0, url  # whole KV blocks
        assert cached < usage["prompt_tokens"], url  # the last token is always computed
    return [first, again, event]


async def test_a_repeated_prompt_reports_cached_tokens_in_the_same_shape(urls: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        blocks = {}
        for which, url in urls.items():
            config = (await scrape(client, f"{url}/metrics"))[vllm_metrics.CACHE_CONFIG_INFO][0][0]
            blocks[which] = int(config["block_size"])
        usages = {k: await _cached_tokens_story(client, u, blocks[k]) for k, u in urls.items()}

    def shape(usage: object) -> object:
        if isinstance(usage, dict):
            return {key: shape(value) for key, value in usage.items()}
        return type(usage).__name__

    # The same fields, nested alike, with values of the same types: whole answers and stream events.
    assert [shape(u) for u in usages["sim"]] == [shape(u) for u in usages["real"]]


async def test_a_stream_answers_its_headers_while_it_still_waits_for_a_slot(vllm_box: OneBox) -> None:
    """Both servers send a stream's status line before its first token: while it waits behind
    requests holding every slot. The EPP's response-headers call then overlaps that wait on both,
    and the benchmarks' first-token times mean the same with the simulator as with vLLM."""
    supervisor = Supervisor()
    try:
        args = ["--model", A, "--max-num-seqs", str(MAX_NUM_SEQS), "--itl-ms", "20", "--itl-sd-ms", "0"]
        child = await supervisor.launch(children.simulator("vllmsim", "127.0.0.1", args))
        sim = f"http://127.0.0.1:{(await supervisor.wait_ready(child, within=30))['http']}"
        for url in (server(vllm_box, A).url, sim):
            await _headers_come_while_waiting(url)
    finally:
        await supervisor.stop()


# Requests queued behind the ones holding every slot before the probe is sent: the probe gets a slot
# only once QUEUED + 1 of them have ended. The tiny model answers 480 tokens in a fraction of a
# second on a warm CPU (a make test-real saw four of them end within 0.2 s), so the queue is long.
QUEUED = 6
# From the first holder's headers to the probe's the holders stream without a pause, and none has
# ended when the probe is sent. Otherwise the client or the server did not run for a while, and then
# read or sent what had piled up at once, in no telling order (the probe even sent once the queue
# was gone): that attempt says nothing and is made again. On a 2-CPU machine with both vLLM servers
# busy, the test's loop was seen not to run for 6.7 s (then reading all eight holders' ends before
# the probe's headers), the real server's answers to pause for 4.0 s, and an unrelated process not to
# run for up to 3.9 s.
STALL = 0.1
ATTEMPTS = 10


async def _headers_come_while_waiting(url: str) -> None:
    """Every slot held by a stream that has begun its answer and QUEUED more waiting; then a stream's
    headers come while it still waits behind them: before QUEUED of them have ended, well before it
    could have a slot and a first token. Judged on the first attempt without a pause."""
    attempts = []
    for _ in range(ATTEMPTS):
        async with httpx.AsyncClient(timeout=120) as client:
            done, seen, stalled = await _probe_behind_a_queue(client, url)
        attempts.append(f"{done} ended before; {seen}")
        if stalled:
            print(f"{url}: a pause in the streams or no queue, attempt made again: {attempts[-1]}")
            continue
        # A slot for the probe takes QUEUED + 1 ends; the last ends as the probe starts, and its
        # reader may hear of it after the probe's headers: QUEUED ends before them is too many.
        assert done < QUEUED, f"{url}: the headers came once a slot was free ({attempts[-1]})"
        return
    pytest.fail(f"{url}: a pause in the streams or no queue in all {ATTEMPTS} attempts: "
                f"{attempts}")  # fmt: skip


Seen = list[tuple[float, str]]  # what the client saw when (seconds since the holders were sent)


async def _probe_behind_a_queue(client: httpx.AsyncClient, url: str) -> tuple[int, Seen, bool]:
    """How many holders had ended when the probe's headers came, what the client saw when, and whether
    the attempt says nothing: the holders' streams paused before those headers, or one had ended before
    the probe was sent."""
    holders_count = MAX_NUM_SEQS + QUEUED
    started = [asyncio.Event() for _ in range(holders_count)]
    ended = [asyncio.Event() for _ in range(holders_count)]
    began = time.monotonic()
    seen: Seen = []
    lines: list[float] = []  # when the holders' headers and each line of their streams were read

    def now() -> float:
        return time.monotonic() - began

    def note(what: str) -> None:
        seen.append((round(now(), 3), what))

    async def hold(index: int) -> None:
        ask = chat(A, max_tokens=480, ignore_eos=True, stream=True)
        async with client.stream("POST", f"{url}/v1/chat/completions", json=ask) as response:
            lines.append(now())
            note(f"holder {index} headers {response.status_code}")
            async for line in response.aiter_lines():
                lines.append(now())
                if line.startswith("data: {") and not started[index].is_set():
                    started[index].set()
                    note(f"holder {index} first token")
        ended[index].set()
        note(f"holder {index} ended")

    async def slots_held() -> None:
        while sum(e.is_set() for e in started) < MAX_NUM_SEQS:  # noqa: ASYNC110 - a few events
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(hold(i)) for i in range(holders_count)]
    try:
        await asyncio.wait_for(slots_held(), timeout=60)
        await asyncio.sleep(0.02)  # the queued ones have reached the server
        ask = chat(A, max_tokens=2, stream=True)
        gone = sum(e.is_set() for e in ended)  # holders that ended before the probe was sent
        note("probe sent")
        async with client.stream("POST", f"{url}/v1/chat/completions", json=ask) as response:
            headers = now()
            note("probe headers")
            assert response.status_code == 200, url
            assert response.headers["content-type"].startswith("text/event-stream"), url
            done = sum(e.is_set() for e in ended)
        between = [*(t for t in lines if t < headers), headers]  # from the first holder's headers
        pause = max(b - a for a, b in itertools.pairwise(between))
        if pause > STALL:
            note(f"the holders' streams paused {pause:.2f} s")
        return done, seen, pause > STALL or gone > 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
