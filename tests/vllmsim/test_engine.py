"""The engine on its own: FIFO slots, KV admission, the prefix cache and the latency model."""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack

import pytest

from vllmsim import SimConfig
from vllmsim.engine import BlockPool, Engine, Sequence, block_hashes

MODEL = "google/gemma-2b-it"


def make_engine(**overrides: object) -> Engine:
    config = SimConfig.model_validate({"models": [MODEL], "time_scale": 0, "seed": 7, **overrides})
    return Engine(config, random.Random(7))


def seq(engine: Engine, name: str, prompt: str = "hello", max_tokens: int = 4) -> Sequence:
    return engine.new_sequence(name, MODEL, prompt, max_tokens)


async def test_requests_beyond_max_num_seqs_wait_in_arrival_order() -> None:
    engine = make_engine(max_num_seqs=2)
    async with AsyncExitStack() as held:
        first, second = seq(engine, "a"), seq(engine, "b")
        await held.enter_async_context(engine.serve(first))
        await held.enter_async_context(engine.serve(second))
        third, fourth = seq(engine, "c"), seq(engine, "d")
        order: list[str] = []

        async def run(s: Sequence) -> None:
            async with engine.serve(s):
                order.append(s.request_id)
                await asyncio.sleep(0)

        waiters = [asyncio.create_task(run(third)), asyncio.create_task(run(fourth))]
        await asyncio.sleep(0)
        assert [s.request_id for s in engine.running] == ["a", "b"]
        assert [s.request_id for s in engine.waiting] == ["c", "d"]
    await asyncio.gather(*waiters)
    assert order == ["c", "d"]
    assert third.waited
    assert fourth.waited
    assert not first.waited
    assert not engine.running
    assert not engine.waiting


async def test_a_cancelled_waiter_leaves_the_queue_and_frees_nothing_it_never_held() -> None:
    engine = make_engine(max_num_seqs=1)
    async with engine.serve(seq(engine, "a")):
        waiter = asyncio.create_task(engine.serve(seq(engine, "b")).__aenter__())
        await asyncio.sleep(0)
        assert len(engine.waiting) == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not engine.waiting
    assert engine.pool.used == 0


async def test_a_request_waits_for_kv_blocks_even_when_a_slot_is_free() -> None:
    # 4 blocks of 16 tokens; each request needs 3 blocks (prompt 8 tokens + 40 output tokens).
    engine = make_engine(kv_cache_blocks=4, block_size=16, max_num_seqs=8)
    big = "x" * 32
    async with engine.serve(seq(engine, "a", big, 40)):
        assert engine.pool.used == 3
        assert engine.pool.usage() == pytest.approx(0.75)
        waiter = asyncio.create_task(engine.serve(seq(engine, "b", big, 40)).__aenter__())
        await asyncio.sleep(0)
        assert len(engine.waiting) == 1
        assert len(engine.running) == 1
    await waiter
    assert [s.request_id for s in engine.running] == ["b"]


async def test_a_repeated_prompt_hits_the_prefix_cache_and_has_a_shorter_computed_ttft() -> None:
    engine = make_engine()
    # 1160 characters, 241 tokens (six a sentence and the trailing space); its 18 full blocks of 64
    # characters hold 238 of them, which vLLM counts in whole 16-token blocks: 224 cached tokens.
    prompt = "You are a helpful assistant. " * 40
    first, second = seq(engine, "a", prompt), seq(engine, "b", prompt)
    for s in (first, second):
        async with engine.serve(s):
            async for _ in engine.tokens(s, streaming=True):
                pass
    assert first.prompt_tokens == second.prompt_tokens == 241
    assert first.cached_tokens == 0
    assert second.cached_tokens == 224
    assert (first.created_cache_tokens, second.created_cache_tokens) == (224, 0)
    assert second.ttft_model_s < first.ttft_model_s
    # TTFT = 30 ms + 250 us x uncached tokens, with one running request (load factor 1).
    assert first.ttft_model_s == pytest.approx((30 + 241 * 0.25) / 1000)
    assert second.ttft_model_s == pytest.approx((30 + (241 - 224) * 0.25) / 1000)
    assert [r.cached_tokens for r in engine.history] == [0, 224]
    assert [r.completion_tokens for r in engine.history] == [4, 4]


async def test_a_prompt_held_whole_in_the_cache_still_computes_its_last_block() -> None:
    engine = make_engine()
    prompt = " ".join(["abc"] * 255) + " abcx"  # 1024 characters (16 blocks), 256 tokens (16 blocks)
    for name in ("a", "b"):
        async with engine.serve(seq(engine, name, prompt)):
            pass
    # As in vLLM, the last prompt token is always computed: 255 tokens could be cached, 240 are
    # in whole blocks.
    assert [r.prompt_tokens for r in engine.history] == [256, 256]
    assert len(prompt) == 1024
    assert [r.cached_tokens for r in engine.history] == [0, 240]


async def test_a_shared_system_prompt_hits_only_its_own_full_blocks() -> None:
    engine = make_engine()
    # 10 blocks of 64 characters, 143 tokens (it ends inside "assistant": " ass" is one more).
    system = ("You are a terse assistant. " * 24)[:640]
    questions = (("a", "istant. What is the capital of France?"), ("b", "How tall is Everest? " * 4))
    for name, question in questions:
        async with engine.serve(seq(engine, name, system + question)):
            pass
    # The second prompt shares the 10 blocks, whose 143 tokens make 8 whole blocks of 16 tokens.
    assert [r.cached_tokens for r in engine.history] == [0, 128]


def test_released_blocks_are_evicted_least_recently_used_first_and_held_blocks_never() -> None:
    pool = BlockPool(total=4)
    old, recent, held = [1, 2], [3], [4]
    for hashes in (old, recent, held):
        pool.acquire(hashes, 0)
    pool.release(old, 0)
    pool.release(recent, 0)
    assert pool.used == 1
    assert pool.free == 3
    assert pool.cached == 4
    pool.acquire([5, 6], 0)  # needs two blocks: evicts the oldest released ones
    assert pool.cached_prefix([1, 2]) == 0
    assert pool.cached_prefix([3]) == 1
    assert pool.cached_prefix([4]) == 1
    assert not pool.fits([7, 8], 0)  # 3 held (4, 5, 6) + only block 3 evictable


def test_block_hashes_chain_so_equal_blocks_after_different_prefixes_differ() -> None:
    a = block_hashes("A" * 64 + "B" * 64, 64)
    b = block_hashes("C" * 64 + "B" * 64, 64)
    assert len(a) == 2
    assert a[1] != b[1]
    assert block_hashes("A" * 63, 64) == []


async def test_latency_grows_linearly_to_the_under_load_factor_as_slots_fill() -> None:
    engine = make_engine(max_num_seqs=3, time_factor_under_load=2.0, itl_sd_ms=0)
    async with AsyncExitStack() as held:
        factors = []
        for name in "abc":
            await held.enter_async_context(engine.serve(seq(engine, name)))
            factors.append(engine.load_factor())
        assert factors == [1.0, 1.5, 2.0]
        assert engine.itl_model() == pytest.approx(0.012 * 2.0)
