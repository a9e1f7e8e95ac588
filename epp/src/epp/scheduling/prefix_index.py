"""Prompt block hashing and the per-endpoint LRU index of them, shared by the prefix scorers.

A prompt is cut into blocks of ``blockSize`` characters (at most ``maxPrefixBlocksToMatch`` of them;
a trailing partial block is ignored). Block hashes are chained — each covers its block and every block
before it — and seeded by the model, so equal hashes mean equal prefixes for the same model. Every
pick records the request's hashes in the picked endpoint's LRU (``lruCapacityPerServer`` hashes per
endpoint), and an endpoint holds a prompt's leading blocks when the index has their hashes.

Hashes use Python's built-in string hashing: fast, and consistent within the process (the index lives
in one process, so hashes need not agree across processes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from itertools import repeat, takewhile

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from epp.scheduling.params import PositiveInt

DEFAULT_BLOCK_SIZE = 64
DEFAULT_MAX_PREFIX_BLOCKS = 256
DEFAULT_LRU_CAPACITY_PER_SERVER = 31250


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


class PrefixIndex:
    """Which block hashes each endpoint holds: an LRU of at most ``capacity`` hashes per endpoint.

    The bulk operations run inside C (``map``/``takewhile`` over dict methods): this is on the path of
    every request.
    """

    def __init__(self, capacity_per_endpoint: int) -> None:
        self.capacity = capacity_per_endpoint
        self._lru: dict[str, OrderedDict[int, None]] = {}

    def add(self, address: str, hashes: Sequence[int]) -> None:
        """Record that ``address`` now caches the blocks ``hashes`` (a prompt's chain, in order)."""
        lru = self._lru.get(address)
        if lru is None:
            lru = self._lru[address] = OrderedDict()
        # Take the hashes out, then append them in reverse: the leading blocks end up the most
        # recently used, so an endpoint evicts the tail of a long prompt before the shared prefix.
        any(map(lru.pop, hashes, repeat(None)))  # pop() returns None: any() runs to the end
        lru.update(zip(reversed(hashes), repeat(None)))
        while len(lru) > self.capacity:
            lru.popitem(last=False)

    def leading_matches(self, hashes: Sequence[int], address: str) -> int:
        """How many of the leading ``hashes`` the endpoint at ``address`` holds."""
        lru = self._lru.get(address)
        if lru is None or not hashes or hashes[0] not in lru:
            return 0
        return len(list(takewhile(lru.__contains__, hashes)))

    def forget(self, address: str) -> None:
        self._lru.pop(address, None)

    def size(self, address: str) -> int:
        """Number of block hashes indexed for ``address``."""
        lru = self._lru.get(address)
        return 0 if lru is None else len(lru)
