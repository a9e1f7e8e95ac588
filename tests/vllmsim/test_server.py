"""The simulator over HTTP, as the gateway, the EPP and the benchmark see it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.vllmsim.conftest import GEMMA, PHI, eventually, labels_of, scrape, value
from vllmsim import SimConfig, running

FAST = {"time_scale": 0, "seed": 1}
PROMPT_8 = "the gateway routes a request to a pod"  # 8 tokens
# One token per second at full scale: requests stay in flight until the test cancels them.
SLOW = {"time_scale": 1, "itl_ms": 1000, "itl_sd_ms": 0, "prefill_overhead_ms": 0, "per_token_us": 0}


def config(**overrides: Any) -> SimConfig:
    return SimConfig.model_validate({"models": [GEMMA], "pod_name": "gemma-0", **FAST, **overrides})


async def post(client: aiohttp.ClientSession, url: str, path: str, body: Any) -> tuple[int, Any, Any]:
    async with client.post(f"{url}{path}", json=body) as response:
        return response.status, await response.json(), response.headers


async def test_models_lists_base_models_and_lora_adapters_with_their_parent(
    client: aiohttp.ClientSession,
) -> None:
    cfg = config(models=[GEMMA, PHI], loras={"gemma-sql": GEMMA})
    async with running(cfg) as sim, client.get(f"{sim.url}/v1/models") as response:
        body = await response.json()
    assert response.status == 200
    assert body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    assert set(cards) == {GEMMA, PHI, "gemma-sql"}
    assert cards[GEMMA]["parent"] is None
    assert cards[GEMMA]["owned_by"] == "vllm"
    assert cards["gemma-sql"]["parent"] == GEMMA
    assert all(card["object"] == "model" and card["max_model_len"] > 0 for card in cards.values())


async def test_a_completion_names_the_model_and_pod_that_served_it(client: aiohttp.ClientSession) -> None:
    async with running(config(loras={"gemma-sql": GEMMA})) as sim:
        status, body, headers = await post(
            client, sim.url, "/v1/completions", {"model": "gemma-sql", "prompt": PROMPT_8, "max_tokens": 6}
        )
    assert status == 200
    assert body["model"] == "gemma-sql"
    assert headers["x-inference-pod"] == "gemma-0"
    assert headers["x-inference-model"] == "gemma-sql"
    assert body["object"] == "text_completion"
    assert len(body["choices"][0]["text"].split()) == 6
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == 8
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["total_tokens"] == 14


async def test_an_unknown_model_gets_a_404_openai_error_that_still_names_the_pod(
    client: aiohttp.ClientSession,
) -> None:
    async with running(config()) as sim:
        status, body, headers = await post(
            client, sim.url, "/v1/chat/completions",
            {"model": PHI, "messages": [{"role": "user", "content": "hi"}]},
        )
    assert status == 404
    assert body == {
        "error": {"message": f"The model `{PHI}` does not exist.", "type": "NotFoundError",
                  "param": "model", "code": 404}
    }
    assert headers["x-inference-pod"] == "gemma-0"
    assert headers["x-inference-model"] == GEMMA


@pytest.mark.parametrize(
    ("path", "raw", "complaint"),
    [
        ("/v1/completions", b'{"model": ', "Malformed JSON"),
        ("/v1/completions", b"[1, 2]", "JSON object"),
        ("/v1/chat/completions", json.dumps({"model": GEMMA}).encode(), "'messages'"),
        ("/v1/completions", json.dumps({"model": GEMMA, "prompt": "hi", "max_tokens": 0}).encode(),
         "'max_tokens'"),
        ("/v1/completions", json.dumps({"model": GEMMA, "prompt": "one " * 40_000}).encode(),
         "maximum context length"),
    ],
)
async def test_bad_requests_get_a_400_that_says_what_is_wrong(
    client: aiohttp.ClientSession, path: str, raw: bytes, complaint: str
) -> None:
    async with running(config()) as sim, client.post(f"{sim.url}{path}", data=raw) as response:
        body = await response.json()
    assert response.status == 400
    assert body["error"]["code"] == 400
    assert body["error"]["type"] == "BadRequestError"
    assert complaint in body["error"]["message"]
    assert response.headers["x-inference-pod"] == "gemma-0"


async def read_sse(response: aiohttp.ClientResponse) -> list[str]:
    events: list[str] = []
    async for line in response.content:
        text = line.decode().strip()
        if text:
            assert text.startswith("data: ")
            events.append(text.removeprefix("data: "))
    return events


async def test_a_streamed_chat_with_include_usage_ends_with_a_usage_chunk_then_done(
    client: aiohttp.ClientSession,
) -> None:
    body = {
        "model": GEMMA, "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 7,
        "stream": True, "stream_options": {"include_usage": True},
    }
    async with running(config()) as sim, client.post(f"{sim.url}/v1/chat/completions", json=body) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["x-inference-model"] == GEMMA
        events = await read_sse(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {GEMMA}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks[1:-1]]
    assert len(content) == 7
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 6 + ["length"]
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert len(text.split()) == 7
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 7
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 7


async def test_a_streamed_completion_without_include_usage_has_no_usage_chunk(
    client: aiohttp.ClientSession,
) -> None:
    body = {"model": GEMMA, "prompt": "Once upon a time", "max_tokens": 3, "stream": True}
    async with running(config()) as sim, client.post(f"{sim.url}/v1/completions", json=body) as response:
        events = await read_sse(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 3
    assert all("usage" not in c and c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_requests_beyond_max_num_seqs_show_up_as_waiting_in_metrics(
    client: aiohttp.ClientSession,
) -> None:
    async with running(config(max_num_seqs=2, **SLOW)) as sim:
        body = {"model": GEMMA, "prompt": "hello " * 100, "max_tokens": 100}
        in_flight = [asyncio.create_task(post(client, sim.url, "/v1/completions", body)) for _ in range(5)]

        async def two_running_three_waiting() -> bool:
            samples = await scrape(client, sim.url)
            return (value(samples, "vllm:num_requests_running") == 2
                    and value(samples, "vllm:num_requests_waiting") == 3)

        await eventually(two_running_three_waiting, "2 running and 3 waiting")
        samples = await scrape(client, sim.url)
        # Each running request needs 13 blocks (101 prompt + 100 output tokens): the 9 full prompt
        # blocks (of 64 characters) are the same for both and held once, the other 4 are their own:
        # 17 of 4096.
        assert value(samples, "vllm:kv_cache_usage_perc") == pytest.approx(17 / 4096)

        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)

        async def drained() -> bool:
            samples = await scrape(client, sim.url)
            return (value(samples, "vllm:num_requests_running") == 0
                    and value(samples, "vllm:num_requests_waiting") == 0)

        await eventually(drained, "the cancelled requests to leave the engine")
        assert sim.engine.pool.used == 0


async def test_a_stream_answers_its_headers_while_it_still_waits_for_a_slot_as_vllm_does(
    client: aiohttp.ClientSession,
) -> None:
    """vLLM sends a stream's status line before its prefill, so a proxy's work on the response
    headers overlaps the wait for the first token rather than adding to it (checked against the
    real server in tests/real/test_simulator_honesty.py)."""
    async with running(config(max_num_seqs=1, **SLOW)) as sim:
        body = {"model": GEMMA, "prompt": PROMPT_8, "max_tokens": 100, "stream": True}
        holder = asyncio.create_task(post(client, sim.url, "/v1/completions", {**body, "stream": False}))
        await eventually(lambda: _running_is(client, sim.url, 1), "the slot taken")
        async with client.post(f"{sim.url}/v1/completions", json=body) as response:
            assert response.status == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-inference-model"] == GEMMA
            samples = await scrape(client, sim.url)
            assert value(samples, "vllm:num_requests_waiting") == 1  # no token of it exists yet
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)


async def _running_is(client: aiohttp.ClientSession, url: str, count: int) -> bool:
    return value(await scrape(client, url), "vllm:num_requests_running") == count


async def test_lora_requests_info_names_running_and_waiting_adapters(client: aiohttp.ClientSession) -> None:
    cfg = config(max_num_seqs=1, loras={"sql": GEMMA, "chat": GEMMA}, **SLOW)
    async with running(cfg) as sim:
        first = asyncio.create_task(
            post(client, sim.url, "/v1/completions", {"model": "sql", "prompt": "a", "max_tokens": 50})
        )
        await eventually(lambda: len(sim.engine.running) == 1, "the sql request to run")
        second = asyncio.create_task(
            post(client, sim.url, "/v1/completions", {"model": "chat", "prompt": "b", "max_tokens": 50})
        )
        await eventually(lambda: len(sim.engine.waiting) == 1, "the chat request to wait")
        samples = await scrape(client, sim.url)
        first.cancel()
        second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
    assert labels_of(samples, "vllm:lora_requests_info") == {
        "max_lora": "2", "running_lora_adapters": "sql", "waiting_lora_adapters": "chat",
    }
    assert value(samples, "vllm:lora_requests_info") > 1.7e9  # a Unix timestamp, as vLLM sets it


async def test_metrics_count_tokens_requests_and_latencies_and_describe_the_cache(
    client: aiohttp.ClientSession,
) -> None:
    async with running(config(kv_cache_blocks=512, block_size=32)) as sim:
        usages = []
        for prompt in (" ".join(["word"] * 10), " ".join(["word"] * 100), "hi"):
            _, body, _ = await post(client, sim.url, "/v1/completions",
                                    {"model": GEMMA, "prompt": prompt, "max_tokens": 5})
            usages.append(body["usage"])
        samples = await scrape(client, sim.url)
    prompt_tokens = sum(u["prompt_tokens"] for u in usages)
    assert value(samples, "vllm:prompt_tokens_total", model_name=GEMMA) == prompt_tokens
    assert value(samples, "vllm:prompt_tokens_total") == 10 + 100 + 1
    assert value(samples, "vllm:generation_tokens_total") == 15
    assert value(samples, "vllm:prefix_cache_queries_total") == 111
    assert value(samples, "vllm:prefix_cache_hits_total") == 0
    assert value(samples, "vllm:time_to_first_token_seconds_count") == 3
    assert value(samples, "vllm:e2e_request_latency_seconds_count") == 3
    assert value(samples, "vllm:inter_token_latency_seconds_count") == 12
    assert value(samples, "vllm:request_success_total", finished_reason="length") == 3
    assert value(samples, "vllm:num_requests_running") == 0
    assert value(samples, "vllm:num_requests_waiting") == 0
    assert value(samples, "vllm:kv_cache_usage_perc") == 0
    cache = labels_of(samples, "vllm:cache_config_info")
    assert cache["block_size"] == "32"
    assert cache["num_gpu_blocks"] == "512"


async def test_a_repeated_prefix_raises_cache_hits_and_lowers_the_computed_ttft(
    client: aiohttp.ClientSession,
) -> None:
    system = {"role": "system", "content": "You are a terse assistant who answers in one line. " * 30}
    async with running(config(enable_prompt_tokens_details=True)) as sim:
        cached = []
        for question in ("What is 2 + 2?", "Name a colour."):
            _, body, _ = await post(client, sim.url, "/v1/chat/completions", {
                "model": GEMMA, "messages": [system, {"role": "user", "content": question}], "max_tokens": 2,
            })
            cached.append(body["usage"]["prompt_tokens_details"]["cached_tokens"])
        samples = await scrape(client, sim.url)
        first, second = sim.engine.history
    assert cached[0] == 0
    assert cached[1] > 300
    assert cached[1] % 16 == 0  # whole KV blocks
    assert value(samples, "vllm:prefix_cache_hits_total") == cached[1]
    assert (first.cached_tokens, second.cached_tokens) == tuple(cached)
    assert second.ttft_model_s < first.ttft_model_s


@pytest.mark.parametrize(("kind", "err_type"), [(429, "RateLimitError"), (503, "ServiceUnavailableError")])
async def test_injected_failures_answer_with_an_openai_error_of_the_chosen_kind(
    client: aiohttp.ClientSession, kind: int, err_type: str
) -> None:
    async with running(config(failure_rate=1.0, failure_kind=kind)) as sim:
        results = [
            await post(client, sim.url, "/v1/completions", {"model": GEMMA, "prompt": "hi"}) for _ in range(3)
        ]
        async with client.get(f"{sim.url}/v1/models") as models:
            assert models.status == 200
    for status, body, headers in results:
        assert status == kind
        assert body["error"]["code"] == kind
        assert body["error"]["type"] == err_type
        assert headers["x-inference-pod"] == "gemma-0"
    assert not sim.engine.history


async def test_until_the_startup_delay_elapses_every_route_answers_503(client: aiohttp.ClientSession) -> None:
    async with running(config(startup_delay=600)) as sim:
        async with client.get(f"{sim.url}/health") as health:
            assert health.status == 503
            assert health.headers["x-inference-pod"] == "gemma-0"
        status, body, _ = await post(client, sim.url, "/v1/completions", {"model": GEMMA, "prompt": "hi"})
        assert status == 503
        assert "starting" in body["error"]["message"]
        async with client.get(f"{sim.url}/metrics") as metrics:
            assert metrics.status == 503


async def test_health_turns_200_once_the_startup_delay_has_elapsed(client: aiohttp.ClientSession) -> None:
    async with running(config(startup_delay=0.2)) as sim:
        async def healthy() -> bool:
            async with client.get(f"{sim.url}/health") as health:
                return health.status == 200

        await eventually(healthy, "/health to answer 200")


async def _usages(client: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any]) -> list[Any]:
    """The usage of a whole answer to ``body``, then of a stream's usage event, twice each."""
    usages: list[Any] = []
    for _ in range(2):
        _, whole, _ = await post(client, url, path, body)
        usages.append(whole["usage"])
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    for _ in range(2):
        async with client.post(f"{url}{path}", json=streamed) as response:
            events = [line[6:] for line in (await response.text()).splitlines() if line.startswith("data: {")]
        usages.append(json.loads(events[-1])["usage"])
    return usages


async def test_cached_tokens_are_reported_only_with_enable_prompt_tokens_details_as_vllm_does(
    client: aiohttp.ClientSession,
) -> None:
    long = "You are a terse assistant who answers in one line. " * 30  # 300 tokens
    chat = {"model": GEMMA, "messages": [{"role": "user", "content": long}], "max_tokens": 2}
    completion = {"model": GEMMA, "prompt": long, "max_tokens": 2}
    async with running(config()) as plain:
        quiet = await _usages(client, plain.url, "/v1/chat/completions", chat)
    # Without the flag: null in a whole answer, left out of a stream's usage event.
    assert [u.get("prompt_tokens_details", "absent") for u in quiet] == [None, None, "absent", "absent"]
    assert quiet[0]["completion_tokens_details"] is None
    async with running(config(enable_prompt_tokens_details=True)) as sim:
        chats = await _usages(client, sim.url, "/v1/chat/completions", chat)
        completions = await _usages(client, sim.url, "/v1/completions", completion)
    first, again, streamed, _ = (u["prompt_tokens_details"] for u in chats)
    assert first == {"cached_tokens": 0, "created_cache_tokens": first["created_cache_tokens"],
                     "multimodal_tokens": None}
    assert first["created_cache_tokens"] > 0
    assert again["cached_tokens"] == first["created_cache_tokens"] > 0
    assert again["created_cache_tokens"] == 0
    assert set(streamed) == {"cached_tokens", "created_cache_tokens"}
    # Completions answers leave created_cache_tokens unset (null, or left out of a stream).
    whole, _, event, _ = (u["prompt_tokens_details"] for u in completions)
    assert whole["created_cache_tokens"] is None
    assert set(event) == {"cached_tokens"}
    assert event["cached_tokens"] > 0
