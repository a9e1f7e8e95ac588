"""prefix-cache-scorer: send a prompt where its leading blocks were sent before (approximate).

The prompt is cut into blocks of ``blockSize`` characters (at most ``maxPrefixBlocksToMatch`` of them;
a trailing partial block is ignored). Block hashes are chained — each covers its block and every block
before it — and seeded by the model, so equal hashes mean equal prefixes for the same model. Every
pick records the request's hashes in the picked endpoint's LRU index (``lruCapacityPerServer``
hashes per endpoint). An endpoint scores the number of leading blocks it holds ÷ the prompt's blocks.

Hashes use Python's built-in string hashing: fast, and consistent within the process (the index lives
in one process, so hashes need not agree across processes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from itertools import repeat, takewhile

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from epp.datastore import Endpoint
from epp.scheduling.factory import PluginType
from epp.scheduling.framework import EndpointStateful, Handle, PostPick, Scorer
from epp.scheduling.params import PositiveInt
from epp.scheduling.types import CycleState, LLMRequest

DEFAULT_BLOCK_SIZE = 64
DEFAULT_MAX_PREFIX_BLOCKS = 256
DEFAULT_LRU_CAPACITY_PER_SERVER = 31250


class PrefixCacheParameters(BaseModel):
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


class PrefixCacheScorer(Scorer, PostPick, EndpointStateful):
    type_name = "prefix-cache-scorer"

    def __init__(
        self,
        name: str,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_prefix_blocks_to_match: int = DEFAULT_MAX_PREFIX_BLOCKS,
        lru_capacity_per_server: int = DEFAULT_LRU_CAPACITY_PER_SERVER,
    ) -> None:
        super().__init__(name)
        self.block_size = block_size
        self.max_blocks = max_prefix_blocks_to_match
        self.index = PrefixIndex(lru_capacity_per_server)

    def _hashes(self, state: CycleState, request: LLMRequest) -> list[int]:
        cached = state.get(self.name)
        if isinstance(cached, list):
            return cached
        hashes = block_hashes(request.model, request.prompt, self.block_size, self.max_blocks)
        state[self.name] = hashes
        return hashes

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        hashes = self._hashes(state, request)
        if not hashes:
            return [0.0] * len(endpoints)
        total = len(hashes)
        matches = self.index.leading_matches
        return [matches(hashes, e.address) / total for e in endpoints]

    def post_pick(self, state: CycleState, request: LLMRequest, endpoint: Endpoint) -> None:
        hashes = self._hashes(state, request)
        if hashes:
            self.index.add(endpoint.address, hashes)

    def forget(self, address: str) -> None:
        self.index.forget(address)


def _build(name: str, parameters: PrefixCacheParameters, handle: Handle) -> PrefixCacheScorer:
    return PrefixCacheScorer(
        name, parameters.block_size, parameters.max_prefix_blocks_to_match, parameters.lru_capacity_per_server
    )


PLUGIN_TYPES = (PluginType("prefix-cache-scorer", PrefixCacheScorer, PrefixCacheParameters, _build),)
