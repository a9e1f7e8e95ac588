"""The simulated inference engine: slots, FIFO queue, prefix-cached KV blocks and the latency model.

How a request flows, as in vLLM:

* It waits in a FIFO queue until one of ``max_num_seqs`` slots is free and the KV cache can hold its
  whole sequence (prompt + requested output; reserved up front, so nothing is ever preempted).
* Its prompt's tokens are counted as a real BPE tokenizer would about count them
  (``vllmsim.tokens``). For the prefix cache the prompt is cut into blocks of ``block_size x
  chars_per_token`` characters; full blocks get chained hashes (each hash covers the block and
  everything before it); leading blocks already resident in the cache are prefix-cache hits, and
  the tokens they hold, in whole blocks of ``block_size`` tokens and never the prompt's last token,
  are its cached tokens (as vLLM reports them in ``prompt_tokens_details.cached_tokens``). Released
  blocks stay cached until evicted, least recently used first, when a new request needs room.
* Time to first token = (prefill overhead + per-token time x uncached prompt tokens) x load factor;
  every later token comes after a normally distributed inter-token latency x load factor. The load
  factor grows linearly from 1 (one running request) to ``time_factor_under_load`` (all slots busy).
* Every delay is multiplied by ``time_scale`` before sleeping; ``time_scale == 0`` never sleeps.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from vllmsim.config import SimConfig
from vllmsim.tokens import count_tokens

# A non-streaming response is only sent at the end, so its token deadlines are slept in chunks of at
# least this many real seconds: same finish time, far fewer wake-ups.
_NON_STREAM_SLEEP_QUANTUM = 0.05


class BlockPool:
    """A fixed number of KV blocks: hashed (prefix-cacheable) prompt blocks and anonymous blocks.

    A hashed block is resident while it is referenced by a running request or parked in the LRU of
    unreferenced blocks; parked blocks count as free and are evicted oldest first on demand.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self._refs: dict[int, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._anonymous = 0

    @property
    def used(self) -> int:
        """Blocks referenced by running requests."""
        return self._anonymous + len(self._refs) - len(self._evictable)

    @property
    def free(self) -> int:
        """Blocks a new request may claim (never used, or cached but unreferenced)."""
        return self.total - self.used

    @property
    def cached(self) -> int:
        """Hashed blocks resident in the cache, referenced or not."""
        return len(self._refs)

    def usage(self) -> float:
        return self.used / self.total

    def cached_prefix(self, hashes: list[int]) -> int:
        """How many leading blocks of ``hashes`` are resident."""
        count = 0
        for block_hash in hashes:
            if block_hash not in self._refs:
                break
            count += 1
        return count

    def claim_cost(self, hashes: list[int], anonymous: int) -> int:
        """Free blocks that holding ``hashes`` plus ``anonymous`` blocks would consume."""
        already_held = sum(1 for h in hashes if self._refs.get(h, 0) > 0)
        return len(hashes) - already_held + anonymous

    def fits(self, hashes: list[int], anonymous: int) -> bool:
        return self.claim_cost(hashes, anonymous) <= self.free

    def acquire(self, hashes: list[int], anonymous: int) -> int:
        """Reference the blocks (allocating missing ones); returns the count of leading cache hits.

        The caller checks ``fits`` first.
        """
        hits = self.cached_prefix(hashes)
        # Pin every resident block first so that allocating the missing ones cannot evict them.
        missing: list[int] = []
        for block_hash in hashes:
            refs = self._refs.get(block_hash)
            if refs is None:
                missing.append(block_hash)
                continue
            if refs == 0:
                del self._evictable[block_hash]
            self._refs[block_hash] = refs + 1
        for block_hash in missing:
            self._make_room()
            self._refs[block_hash] = 1
        for _ in range(anonymous):
            self._make_room()
            self._anonymous += 1
        return hits

    def release(self, hashes: list[int], anonymous: int) -> None:
        """Drop the references; hashed blocks are parked as evictable, the prompt's tail first."""
        self._anonymous -= anonymous
        for block_hash in reversed(hashes):
            refs = self._refs[block_hash] - 1
            self._refs[block_hash] = refs
            if refs == 0:
                self._evictable[block_hash] = None

    def _make_room(self) -> None:
        """Ensure one never-used block exists, evicting the least recently released cached block."""
        if self._anonymous + len(self._refs) < self.total:
            return
        victim, _ = self._evictable.popitem(last=False)
        del self._refs[victim]


def load_factor(config: SimConfig, running: int) -> float:
    """1 with one running request, ``time_factor_under_load`` with every slot busy, linear between."""
    slots = config.max_num_seqs
    if slots <= 1:
        return 1.0
    busy = max(0, running - 1) / (slots - 1)
    return 1.0 + (config.time_factor_under_load - 1.0) * min(1.0, busy)


def block_hashes(text: str, chars_per_block: int) -> list[int]:
    """Chained hashes of the full blocks of ``text`` (a partial last block is not cacheable)."""
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(text) - chars_per_block + 1, chars_per_block):
        parent = hash((parent, text[start : start + chars_per_block]))
        hashes.append(parent)
    # Equal hashes inside one prompt would be counted twice; chaining makes them (near) impossible.
    return list(dict.fromkeys(hashes))


@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    request_id: str
    model: str  # the name the client asked for (a base model or a LoRA adapter)
    lora: str | None
    prompt: str
    prompt_tokens: int
    max_tokens: int
    hashes: list[int]
    anonymous_blocks: int
    waited: bool = False
    cached_tokens: int = 0
    created_cache_tokens: int = 0  # prompt tokens in full blocks newly written to the cache
    generated: int = 0
    ttft_model_s: float = 0.0  # computed time to first token, unscaled, excluding queueing
    itl_model_s: list[float] = field(default_factory=list)  # computed inter-token latencies, unscaled
    admitted: asyncio.Future[None] | None = None  # set while it waits in the queue


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What the engine computed for one finished request (timings are simulated, unscaled seconds)."""

    request_id: str
    model: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    waited: bool
    ttft_model_s: float
    itl_model_mean_s: float  # mean computed inter-token latency, unscaled (0 with one token)


class Engine:
    """Admission, KV accounting and token timing for one simulated vLLM instance."""

    def __init__(self, config: SimConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self.pool = BlockPool(config.kv_cache_blocks)
        self.running: list[Sequence] = []
        self.waiting: deque[Sequence] = deque()
        self.history: deque[RequestRecord] = deque(maxlen=1024)
        self._chars_per_block = config.block_size * config.chars_per_token

    # --- building a sequence -------------------------------------------------------------------

    def new_sequence(self, request_id: str, model: str, prompt: str, max_tokens: int) -> Sequence:
        prompt_tokens = count_tokens(prompt)
        hashes = block_hashes(prompt, self._chars_per_block)
        total_blocks = math.ceil((prompt_tokens + max_tokens) / self.config.block_size)
        return Sequence(
            request_id=request_id,
            model=model,
            lora=model if model in self.config.loras else None,
            prompt=prompt,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            hashes=hashes,
            anonymous_blocks=max(0, total_blocks - len(hashes)),
        )

    # --- admission ------------------------------------------------------------------------------

    @asynccontextmanager
    async def serve(self, seq: Sequence) -> AsyncIterator[Sequence]:
        """Hold a slot and the sequence's KV blocks for the duration of the block."""
        await self._admit(seq)
        try:
            yield seq
        finally:
            self._finish(seq)

    async def _admit(self, seq: Sequence) -> None:
        if not self.waiting and self._can_start(seq):
            self._start(seq)
            return
        seq.waited = True
        seq.admitted = asyncio.get_running_loop().create_future()
        self.waiting.append(seq)
        try:
            await seq.admitted
        except asyncio.CancelledError:
            if seq in self.running:  # admitted in the same tick the waiter was cancelled
                self._release(seq)
            elif seq in self.waiting:
                self.waiting.remove(seq)
                self._schedule()
            raise

    def _can_start(self, seq: Sequence) -> bool:
        return len(self.running) < self.config.max_num_seqs and self.pool.fits(
            seq.hashes, seq.anonymous_blocks
        )

    def _start(self, seq: Sequence) -> None:
        hit_blocks = self.pool.acquire(seq.hashes, seq.anonymous_blocks)
        size = self.config.block_size
        if hit_blocks:
            # The tokens of the cached characters, in whole KV blocks; as in vLLM, the prompt's last
            # token is always computed.
            hit_tokens = self._tokens_before(seq, hit_blocks * self._chars_per_block)
            seq.cached_tokens = min(hit_tokens, seq.prompt_tokens - 1) // size * size
        # The full blocks' tokens now in the cache that were not before (vLLM's created_cache_tokens).
        cacheable = self._tokens_before(seq, len(seq.hashes) * self._chars_per_block)
        seq.created_cache_tokens = max(0, cacheable // size * size - seq.cached_tokens)
        self.running.append(seq)

    @staticmethod
    def _tokens_before(seq: Sequence, chars: int) -> int:
        """The prompt's tokens in its first ``chars`` characters, counting the shorter side."""
        prompt = seq.prompt
        if chars >= len(prompt):
            return seq.prompt_tokens
        if 2 * chars < len(prompt):
            return count_tokens(prompt[:chars])
        return max(0, seq.prompt_tokens - count_tokens(prompt[chars:]))

    def _schedule(self) -> None:
        """Start waiting sequences in FIFO order while the head fits."""
        while self.waiting:
            seq = self.waiting[0]
            assert seq.admitted is not None
            if seq.admitted.done():  # its waiter was cancelled; it will not start
                self.waiting.popleft()
                continue
            if not self._can_start(seq):
                return
            self.waiting.popleft()
            self._start(seq)
            seq.admitted.set_result(None)

    def _release(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.pool.release(seq.hashes, seq.anonymous_blocks)
        self._schedule()

    def _finish(self, seq: Sequence) -> None:
        self._release(seq)
        self.history.append(
            RequestRecord(
                request_id=seq.request_id,
                model=seq.model,
                prompt_tokens=seq.prompt_tokens,
                cached_tokens=seq.cached_tokens,
                completion_tokens=seq.generated,
                waited=seq.waited,
                ttft_model_s=seq.ttft_model_s,
                itl_model_mean_s=sum(seq.itl_model_s) / len(seq.itl_model_s) if seq.itl_model_s else 0.0,
            )
        )

    # --- latency model --------------------------------------------------------------------------

    def load_factor(self) -> float:
        return load_factor(self.config, len(self.running))

    def ttft_model(self, seq: Sequence) -> float:
        uncached = seq.prompt_tokens - seq.cached_tokens
        millis = self.config.prefill_overhead_ms + uncached * self.config.per_token_us / 1000.0
        return millis / 1000.0 * self.load_factor()

    def itl_model(self) -> float:
        sample = self._rng.gauss(self.config.itl_ms, self.config.itl_sd_ms)
        return max(0.0, sample) / 1000.0 * self.load_factor()

    async def tokens(self, seq: Sequence, *, streaming: bool) -> AsyncIterator[float]:
        """Yield once per output token, when it is due; the value is its scaled delay in seconds.

        Must run inside ``serve(seq)``. Deadlines are absolute, so sleep overshoot does not
        accumulate. A non-streaming caller is woken at its first token (so TTFT is real), then only
        every ``_NON_STREAM_SLEEP_QUANTUM`` and at its last token.
        """
        scale = self.config.time_scale
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        for index in range(seq.max_tokens):
            if index == 0:
                model_delay = seq.ttft_model_s = self.ttft_model(seq)
            else:
                model_delay = self.itl_model()
                seq.itl_model_s.append(model_delay)
            delay = model_delay * scale
            if delay > 0:
                deadline += delay
                remaining = deadline - loop.time()
                last = index == seq.max_tokens - 1
                due = streaming or index == 0 or last or remaining >= _NON_STREAM_SLEEP_QUANTUM
                if remaining > 0 and due:
                    await asyncio.sleep(remaining)
            seq.generated += 1
            yield delay

    # --- observed state -------------------------------------------------------------------------

    def running_adapters(self) -> list[str]:
        return sorted({s.lora for s in self.running if s.lora is not None})

    def waiting_adapters(self) -> list[str]:
        return sorted({s.lora for s in self.waiting if s.lora is not None})
