"""Prompt block hashing and the per-endpoint LRU index of them, shared by the prefix scorers.

A prompt is cut into blocks of ``blockSize`` characters (at most ``maxPrefixBlocksToMatch`` of them;
a trailing partial block is ignored). Block hashes are chained — each covers its block and every block
before it — and seeded by the model, so equal hashes mean equal prefixes for the same model. Every
pick records the request's hashes in the picked endpoint's LRU (``lruCapacityPerServer`` hashes per
endpoint), and an endpoint holds a prompt's leading blocks when the index has their hashes.

Hashes use Python's built-in string hashing: fast, and consistent within the process (the index lives
in one process, so hashes need not agree across processes).

**Following the pods' real caches.** The index is a guess: a pod evicts blocks when its KV cache is
full, and loses them all when it restarts, and the index hears of neither. A pod started with vLLM's
``--enable-prompt-tokens-details`` says in each answer's ``usage.prompt_tokens_details.cached_tokens``
how many prompt tokens it found cached. When the pick was a predicted hit (the picked pod held
``n`` leading blocks by the index), :class:`CachePrediction` keeps when each of those blocks was
last recorded there, and :func:`stale_before` reads the answer: a pod that found at least half of the
predicted blocks confirms the prediction; one that found fewer lacks the first block past what it
found, and a pod's cache drops its least recently used blocks first, so every entry of that pod
recorded no later than that block is stale and :meth:`PrefixIndex.forget_older` drops them (the
request's own blocks, just recorded again by its pick, stay: the pod has computed them now). Tokens
become characters by the request's own ratio (its prompt's characters over its ``prompt_tokens``),
so no tokenizer is needed.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from itertools import islice, repeat, takewhile

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from epp.scheduling.params import PositiveInt
from epp.scheduling.types import CycleState

DEFAULT_BLOCK_SIZE = 64
DEFAULT_MAX_PREFIX_BLOCKS = 256
DEFAULT_LRU_CAPACITY_PER_SERVER = 31250
# A pod that found at least this share of the predicted blocks in its cache confirms the prediction.
CONFIRMED_SHARE = 0.5
# Where a scheduling cycle's predicted hits are kept (a list of CachePrediction), for the answer.
PREDICTIONS = "prefix-cache-predictions"


class PrefixIndexParameters(BaseModel):
    """The parameters of block hashing and of the index, as both prefix scorers spell them."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # Upstream renamed hashBlockSize to blockSize; configs with either name keep working.
    block_size: PositiveInt = Field(
        DEFAULT_BLOCK_SIZE, alias="blockSize", validation_alias=AliasChoices("blockSize", "hashBlockSize")
    )
    max_prefix_blocks_to_match: PositiveInt = Field(DEFAULT_MAX_PREFIX_BLOCKS, alias="maxPrefixBlocksToMatch")
    lru_capacity_per_server: PositiveInt = Field(
        DEFAULT_LRU_CAPACITY_PER_SERVER, alias="lruCapacityPerServer"
    )


def block_hashes(model: str, prompt: str, block_size: int, max_blocks: int) -> list[int]:
    """Chained hashes of the prompt's leading full blocks, seeded by the model."""
    count = min(len(prompt) // block_size, max_blocks)
    hashes = [0] * count
    current = hash(model)
    start = 0
    for i in range(count):
        end = start + block_size
        current = hash((current, prompt[start:end]))
        hashes[i] = current
        start = end
    return hashes


def _consume(iterator: Iterator[object]) -> None:
    """Run ``iterator`` to its end, in C."""
    deque(iterator, maxlen=0)


class PrefixIndex:
    """Which block hashes each endpoint holds: an LRU of at most ``capacity`` hashes per endpoint.

    Each entry keeps the stamp of the :meth:`add` that last recorded it (a counter, one per call), so
    an endpoint's LRU is ordered by stamp, oldest first. The bulk operations run inside C
    (``map``/``takewhile`` over dict methods): this is on the path of every request.
    """

    def __init__(self, capacity_per_endpoint: int) -> None:
        self.capacity = capacity_per_endpoint
        self._lru: dict[str, OrderedDict[int, int]] = {}
        self._stamp = 0

    def add(self, address: str, hashes: Sequence[int]) -> None:
        """Record that ``address`` now caches the blocks ``hashes`` (a prompt's chain, in order)."""
        lru = self._lru.get(address)
        if lru is None:
            lru = self._lru[address] = OrderedDict()
        self._stamp += 1
        # Take the hashes out, then append them in reverse: the leading blocks end up the most
        # recently used, so an endpoint evicts the tail of a long prompt before the shared prefix.
        _consume(map(lru.pop, hashes, repeat(None)))
        lru.update(zip(reversed(hashes), repeat(self._stamp)))
        excess = len(lru) - self.capacity
        if excess > 0:  # the least recently used go, in C
            _consume(map(lru.popitem, repeat(False, excess)))

    def leading_matches(self, hashes: Sequence[int], address: str) -> int:
        """How many of the leading ``hashes`` the endpoint at ``address`` holds."""
        lru = self._lru.get(address)
        if lru is None or not hashes or hashes[0] not in lru:
            return 0
        return len(list(takewhile(lru.__contains__, hashes)))

    def predict(
        self, address: str, hashes: Sequence[int], block_size: int, prompt_chars: int
    ) -> CachePrediction | None:
        """What the index says ``address`` holds of a prompt about to be sent there (before the pick
        records it): None when it holds none of its leading blocks."""
        lru = self._lru.get(address)
        if lru is None or not hashes or hashes[0] not in lru:
            return None
        held = list(takewhile(lru.__contains__, hashes))
        return CachePrediction(self, address, list(map(lru.__getitem__, held)), block_size, prompt_chars)

    def forget_older(self, address: str, stamp: int) -> int:
        """Drop the entries of ``address`` recorded no later than ``stamp``; returns how many."""
        lru = self._lru.get(address)
        if lru is None:
            return 0
        stale = sum(1 for _ in takewhile(stamp.__ge__, lru.values()))
        for victim in list(islice(lru, stale)):
            del lru[victim]
        return stale

    def forget(self, address: str) -> None:
        self._lru.pop(address, None)

    def size(self, address: str) -> int:
        """Number of block hashes indexed for ``address``."""
        lru = self._lru.get(address)
        return 0 if lru is None else len(lru)


class CachePrediction:
    """A predicted cache hit: the pod the request went to and the stamps of the leading blocks the
    index said it held, to be judged by the ``cached_tokens`` the pod reports."""

    __slots__ = ("address", "block_size", "index", "prompt_chars", "stamps")

    def __init__(
        self, index: PrefixIndex, address: str, stamps: list[int], block_size: int, prompt_chars: int
    ) -> None:
        self.index = index
        self.address = address
        self.stamps = stamps
        self.block_size = block_size
        self.prompt_chars = prompt_chars

    @property
    def blocks(self) -> int:
        return len(self.stamps)

    def settle(self, prompt_tokens: int, cached_tokens: int) -> int | None:
        """Judge the prediction by the pod's answer and correct the index: None when confirmed (or
        nothing can be said), else the number of the pod's entries dropped as stale."""
        stamp = stale_before(self, prompt_tokens, cached_tokens)
        if stamp is None:
            return None
        return self.index.forget_older(self.address, stamp)


def stale_before(prediction: CachePrediction, prompt_tokens: int, cached_tokens: int) -> int | None:
    """The stamp at and before which the pod's entries are stale, or None when the answer confirms
    the prediction (the pod found at least ``CONFIRMED_SHARE`` of the predicted blocks)."""
    if prompt_tokens <= 0 or cached_tokens < 0:
        return None
    found_chars = min(cached_tokens, prompt_tokens) * prediction.prompt_chars / prompt_tokens
    found_blocks = found_chars / prediction.block_size
    stamps = prediction.stamps
    if found_blocks >= CONFIRMED_SHARE * len(stamps):
        return None
    # The first predicted block the pod did not find (found_blocks < len(stamps) here).
    return stamps[int(found_blocks)]


def keep_prediction(state: CycleState, prediction: CachePrediction | None) -> None:
    """Keep a predicted hit in the cycle state (nothing for None)."""
    if prediction is None:
        return
    kept = state.get(PREDICTIONS)
    if isinstance(kept, list):
        kept.append(prediction)
    else:
        state[PREDICTIONS] = [prediction]


def kept_predictions(state: CycleState) -> list[CachePrediction]:
    """The predicted hits a scheduling cycle kept."""
    kept = state.get(PREDICTIONS)
    return [p for p in kept if isinstance(p, CachePrediction)] if isinstance(kept, list) else []
