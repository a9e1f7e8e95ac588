"""prefix-cache-scorer: send a prompt where its leading blocks were sent before (approximate).

Block hashing and the per-endpoint LRU index are ``epp.scheduling.prefix_index``'s: the prompt's
chained block hashes (at most ``maxPrefixBlocksToMatch`` blocks of ``blockSize`` characters) are
recorded in the picked endpoint's LRU (``lruCapacityPerServer`` hashes). An endpoint scores the number
of leading blocks it holds ÷ the prompt's blocks. Replicas that share their picks (``epp.peers``)
record each other's too.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.scheduling.framework import (
    CacheFeedback,
    EndpointStateful,
    Handle,
    PeerShared,
    PostPick,
    Scorer,
    SharedPick,
)
from epp.scheduling.prefix_index import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_LRU_CAPACITY_PER_SERVER,
    DEFAULT_MAX_PREFIX_BLOCKS,
    PrefixIndex,
    PrefixIndexParameters,
    block_hashes,
    keep_prediction,
)
from epp.scheduling.registry import register
from epp.scheduling.types import CycleState, LLMRequest


@register
class PrefixCacheScorer(Scorer, PostPick, EndpointStateful, CacheFeedback, PeerShared):
    type_name = "prefix-cache-scorer"
    Parameters = PrefixIndexParameters

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

    @classmethod
    def configure(cls, name: str, parameters: PrefixIndexParameters, handle: Handle) -> PrefixCacheScorer:
        return cls(
            name,
            block_size=parameters.block_size,
            max_prefix_blocks_to_match=parameters.max_prefix_blocks_to_match,
            lru_capacity_per_server=parameters.lru_capacity_per_server,
        )

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
            if self.learns_from_cached_tokens and request.usage_reported:
                keep_prediction(
                    state, self.index.predict(endpoint.address, hashes, self.block_size, len(request.prompt))
                )
            self.index.add(endpoint.address, hashes)
            if self.share is not None:
                self.share(SharedPick(self.name, request.model, None, endpoint.address, hashes))

    def apply_shared(self, pick: SharedPick, hashes_agree: bool) -> None:
        """A peer's pick: its blocks on the pod it picked, where the peer hashes prompts alike."""
        if hashes_agree and pick.hashes:
            self.index.add(pick.address, pick.hashes)

    def forget(self, address: str) -> None:
        self.index.forget(address)

