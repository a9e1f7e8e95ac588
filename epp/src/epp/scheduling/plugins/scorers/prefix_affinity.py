"""prefix-affinity-scorer: a prompt prefix goes to one home pod, every replica agreeing, within a load bound.

Where a prefix goes, in order:

1. **Home.** Every prompt with at least one full block of ``blockSize`` characters has a home pod: the
   rendezvous (highest-random-weight) winner over the candidates' addresses of a stable hash
   (BLAKE2b, the same in every process) of the model and the prompt's first ``homePrefixBlocks``
   blocks. Any EPP replica, restarted or new, computes the same home from the same pool, without
   talking to the others; a pod joining or leaving moves only the prefixes it wins or held. A prefix
   that recurs (an active group of its model) has a balanced home instead: every replica deals its
   model's active groups out evenly over the pods, in the same order, each to the first pod of its
   rendezvous order with room (``epp.scheduling.balanced_homes``), so no pod is home to many more
   groups than another.
2. **Bound.** A pod may take the request only while its load is at most ``loadBound x the mean load
   of the candidates + 1`` — consistent hashing with bounded loads; the +1 keeps an idle pool from
   flapping (a home with a request or two in flight keeps its prefix). A pod's load is
   ``waitingWeight x waiting + running`` from its metrics (a request waiting for a slot counts twice
   by default: a pod queues only when it has no slot free, so one sent there waits too, where a pod
   with as many requests, all running, starts it at once; a pod with fewer slots, or a slower one,
   no longer keeps a queue while others have room) plus the requests this EPP routed to it since
   that scrape (or this EPP's in-flight count to it, if larger), and the in-flight count alone where
   its metrics are older than ``metricsStalenessThreshold`` or were never scraped. The answers this
   EPP saw end since the scrape (``epp.requestcontrol.answer_ends``) come off the loads that rank the
   pods, not off those the bound is judged on: with them there a prefix left its pod more often. A
   lone replica also guesses the ends it could not see (streams not followed), as many as it routed
   since the scrapes, its oldest requests first, never on a pod whose scrape showed a queue
   (``epp.datastore.unseen_ends``); they come off both.
   With ``loadBound`` ≥ 1 the least-loaded pod is always within the bound.
3. **Learned index.** Every pick records the prompt's chained block hashes (at most
   ``maxPrefixBlocksToMatch``) in the picked pod's LRU (``lruCapacityPerServer`` hashes): the
   ``epp.scheduling.prefix_index`` that ``prefix-cache-scorer`` uses too; replicas that share their
   picks (``epp.peers``) record each other's, and each other's sightings for the balanced homes
   (:meth:`PrefixAffinityScorer.apply_shared`). When the home is over the
   bound, a pod within the bound that holds the longest part of the prefix is preferred; with none,
   the least-loaded pod.

The score, in [0, 1], is ``0.5 x credit + 0.5 x (1 - load / (highest load + 1))``. The home within
the bound gets the credit ``min(blocks, homePrefixBlocks) / homePrefixBlocks`` (a prompt of a few
blocks gains little from a cache, so its load counts for more). Only when the home is over the
bound does a pod within the bound that holds part of the prefix by the index get 0.9 x that x the
fraction of the prompt's blocks it holds: while the home is within it, the other replicas keep
sending the prefix there, and a replica that kept its own spill pod alive beside it would keep the
group cached on two pods. Pods over the bound get none. A prefix the index holds nowhere yet (a
prompt seen for the first time by this EPP) goes, where the pool has several EPP replicas (the
EPP's ``--replicas``), to its home when the home is at most as loaded as the mean: another replica
may well have sent it there already, and placed by load alone it would get a second copy on
another pod; otherwise its home gets a tenth of the credit and only breaks ties. The load term
ranks the rest, least loaded first.

**A lone replica** (``--replicas 1``, the default) knows every pod it sent a prefix to, so it drops
the home: the pods within the bound that hold part of the prompt's prefix by its index get the
holder's credit for the blocks they hold (a leading system message every pod holds counts the same
everywhere), a prefix it has sent nowhere is placed by load alone, and one it has sent elsewhere
stays with the pods that hold it rather than get a second copy at its home. Ties between equally
loaded pods (one-off prompts under a closed loop, most often) go to the pod it sent a request to
least recently: between scrapes, its oldest request is the likeliest to have ended while its
scraped load still counts it (at most 0.4 of one load unit's score, so never against a load
difference). Measured in virtual time (``python -m bench.picksim``, streamed answers, one replica
placing by this rule or by the peers' rule): long-prompt 8.4 against 7.4 req/s (round robin 8.4),
cache-bound 51.1 against 49.8, prefix-fits 55.2 against 53.0. Given up: after a
restart, a lone replica no longer sends a group back to the pod that held it before (its index is
empty; the home would have been the same pod unless the group had spilled).

``loadBound`` must be at least 1 (default 1.5). In a pool of ``n`` pods no load exceeds ``n`` x the
mean, so a bound of ``n`` or more never binds: 2 would let one pod of a two-pod pool take everything.

Per request: one BLAKE2b of at most ``blockSize x homePrefixBlocks`` characters, the chained built-in
hashes for the index (per process, like the index itself), both computed once and kept in the cycle
state for the post-pick hook, and a few integer operations per candidate (a lone replica also sorts
the candidates' last send times; a replica of several records the prefix's sighting and the
candidates for its balanced homes, and deals them again at most every 0.25 s).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import Any

from pydantic import Field, field_validator

from epp.datastore import Endpoint, unseen_ends
from epp.scheduling.balanced_homes import BalancedHomes
from epp.scheduling.framework import (
    CacheFeedback,
    EndpointStateful,
    Handle,
    PeerShared,
    PostPick,
    Scorer,
    SharedPick,
)
from epp.scheduling.params import Duration, PositiveInt
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

DEFAULT_LOAD_BOUND = 2.0
DEFAULT_HOME_PREFIX_BLOCKS = 16
DEFAULT_METRICS_STALENESS = 0.2
DEFAULT_WAITING_WEIGHT = 2
# A pod holding the prefix (not its home) gets this share of the home's credit.
_HELD_CREDIT = 0.9
# The home's share of its credit for a prefix no pod holds yet (by this EPP's index): a tie-break.
_FIRST_SIGHT = 0.1
_MASK64 = (1 << 64) - 1
# Of one load unit's score, what going longest without a request is worth: breaks ties, never a load.
_LEAST_RECENT = 0.4


class PrefixAffinityParameters(PrefixIndexParameters):
    """The learned index's parameters (as ``prefix-cache-scorer``'s), the home and the load bound."""

    load_bound: float = Field(DEFAULT_LOAD_BOUND, alias="loadBound")
    home_prefix_blocks: PositiveInt = Field(DEFAULT_HOME_PREFIX_BLOCKS, alias="homePrefixBlocks")
    # Seconds; written as a duration ("200ms") or a number of seconds.
    metrics_staleness_threshold: Duration = Field(
        DEFAULT_METRICS_STALENESS, alias="metricsStalenessThreshold"
    )
    waiting_weight: PositiveInt = Field(DEFAULT_WAITING_WEIGHT, alias="waitingWeight")

    @field_validator("load_bound", mode="before")
    @classmethod
    def _at_least_one(cls, value: Any) -> float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < 1:
            raise ValueError(f"must be a number of at least 1 (a multiple of the mean load), got {value!r}")
        return float(value)


def stable_hash64(data: bytes) -> int:
    """A 64-bit hash of ``data`` that every process computes alike (unlike the built-in ``hash``)."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def _mix64(x: int) -> int:
    """The splitmix64 finaliser: spreads every input bit over the 64 output bits."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def home_key(model: str, prompt: str, block_size: int, home_blocks: int) -> int | None:
    """The stable key of the prompt's leading blocks (at most ``home_blocks``); None under one block."""
    blocks = min(len(prompt) // block_size, home_blocks)
    if blocks == 0:
        return None
    return stable_hash64(b"%s\0%s" % (model.encode(), prompt[: blocks * block_size].encode()))


class _Prompt:
    """What one request's prompt hashes to, computed once per scheduling cycle."""

    __slots__ = ("credit", "hashes", "home")

    def __init__(self, home: int | None, hashes: list[int], credit: float) -> None:
        self.home = home
        self.hashes = hashes
        self.credit = credit


@register
class PrefixAffinityScorer(Scorer, PostPick, EndpointStateful, CacheFeedback, PeerShared):
    type_name = "prefix-affinity-scorer"
    Parameters = PrefixAffinityParameters

    def __init__(
        self,
        name: str,
        load_bound: float = DEFAULT_LOAD_BOUND,
        block_size: int = DEFAULT_BLOCK_SIZE,
        home_prefix_blocks: int = DEFAULT_HOME_PREFIX_BLOCKS,
        max_prefix_blocks_to_match: int = DEFAULT_MAX_PREFIX_BLOCKS,
        lru_capacity_per_server: int = DEFAULT_LRU_CAPACITY_PER_SERVER,
        metrics_staleness_threshold: float = DEFAULT_METRICS_STALENESS,
        clock: Callable[[], float] = time.monotonic,
        replicas: int = 1,
        waiting_weight: int = DEFAULT_WAITING_WEIGHT,
    ) -> None:
        super().__init__(name)
        if load_bound < 1.0:
            raise ValueError(f"loadBound must be at least 1, got {load_bound!r}")
        self.load_bound = load_bound
        self.block_size = block_size
        self.home_blocks = home_prefix_blocks
        self.max_blocks = max_prefix_blocks_to_match
        self.staleness = metrics_staleness_threshold
        if waiting_weight < 1:
            raise ValueError(f"waitingWeight must be at least 1, got {waiting_weight!r}")
        self.waiting_weight = waiting_weight
        self.index = PrefixIndex(lru_capacity_per_server)
        self._clock = clock
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        # Other replicas may have sent a prefix new to this one home already (see score).
        self.has_peers = replicas > 1
        # Stable hash of each address seen (the rendezvous node ids); dropped when a pod leaves.
        self._node_ids: dict[str, int] = {}
        # With peers, a recurring prefix's home: its model's groups dealt out evenly, alike everywhere.
        self._balanced = BalancedHomes(self._weight)

    @classmethod
    def from_parameters(
        cls, name: str, parameters: PrefixAffinityParameters, clock: Callable[[], float] = time.monotonic,
        replicas: int = 1,
    ) -> PrefixAffinityScorer:
        return cls(
            name,
            load_bound=parameters.load_bound,
            block_size=parameters.block_size,
            home_prefix_blocks=parameters.home_prefix_blocks,
            max_prefix_blocks_to_match=parameters.max_prefix_blocks_to_match,
            lru_capacity_per_server=parameters.lru_capacity_per_server,
            metrics_staleness_threshold=parameters.metrics_staleness_threshold,
            clock=clock,
            replicas=replicas,
            waiting_weight=parameters.waiting_weight,
        )

    @classmethod
    def configure(
        cls, name: str, parameters: PrefixAffinityParameters, handle: Handle
    ) -> PrefixAffinityScorer:
        return cls.from_parameters(name, parameters, replicas=handle.replicas)

    def _prompt(self, state: CycleState, request: LLMRequest) -> _Prompt:
        cached = state.get(self.name)
        if isinstance(cached, _Prompt):
            return cached
        prompt, size = request.prompt, self.block_size
        blocks = len(prompt) // size
        # A lone replica never places by the home: no key to hash.
        home = home_key(request.model, prompt, size, self.home_blocks) if self.has_peers else None
        hashes = block_hashes(request.model, prompt, size, self.max_blocks) if blocks else []
        credit = min(blocks, self.home_blocks) / self.home_blocks
        parsed = state[self.name] = _Prompt(home, hashes, credit)
        return parsed

    def _node_id(self, address: str) -> int:
        node = self._node_ids.get(address)
        if node is None:
            node = self._node_ids[address] = stable_hash64(address.encode())
        return node

    def home(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> Endpoint | None:
        """The request's rendezvous home among ``endpoints`` (None for a prompt under one block): what
        every replica of several picks first for a prefix it has not seen recur (one that recurs
        has its balanced home instead)."""
        key = home_key(request.model, request.prompt, self.block_size, self.home_blocks)
        if key is None or not endpoints:
            return None
        return endpoints[self._rendezvous(key, endpoints)]

    def _rendezvous(self, key: int, endpoints: Sequence[Endpoint]) -> int:
        # ``_weight`` written out: this loop runs over every candidate of a request.
        node_id, best, winner = self._node_id, -1, 0
        for i, e in enumerate(endpoints):
            weight = _mix64(key ^ node_id(e.address))
            if weight > best:
                best, winner = weight, i
        return winner

    def _weight(self, key: int, address: str) -> int:
        """The rendezvous weight of ``address`` for ``key``: the highest wins."""
        return _mix64(key ^ self._node_id(address))

    def _home_of(self, request: LLMRequest, key: int, endpoints: Sequence[Endpoint]) -> int:
        """With peers: the balanced home of a recurring prefix (``balanced_homes``), else its
        rendezvous home."""
        addresses = tuple(e.address for e in endpoints)
        balanced = self._balanced.home(request.model, key, addresses, self._clock())
        if balanced is not None:
            try:
                return addresses.index(balanced)
            except ValueError:
                pass  # filtered out of this request's candidates
        return self._rendezvous(key, endpoints)

    def loads(self, endpoints: Sequence[Endpoint]) -> list[int]:
        """Each endpoint's load (:meth:`Endpoint.estimated_load`): ``waitingWeight x waiting +
        running`` from fresh metrics plus the requests routed to it since, less the answers seen (or
        guessed, ``unseen_ends``) to end since, or the in-flight count where the metrics are stale or
        absent."""
        return [less for less, _ in self._both_loads(endpoints)]

    def _both_loads(self, endpoints: Sequence[Endpoint]) -> list[tuple[int, int]]:
        """Each endpoint's load less the answers seen to end since its scrape, and without them; a
        lone replica's guessed unseen ends (``unseen_ends``) come off both."""
        oldest = self._clock() - self.staleness
        weight = self.waiting_weight
        both = [e.estimated_loads(oldest, waiting_weight=weight) for e in endpoints]
        if self.has_peers:
            # The scrapes count the other replicas' requests too, which this one cannot tell apart.
            return both
        ends = unseen_ends(endpoints, oldest)
        for i, gone in enumerate(ends):
            if gone:  # each a running request (none is guessed where a scrape showed a queue)
                own = endpoints[i].load.count
                less, without = both[i]
                both[i] = max(less - gone, own), max(without - gone, own)
        return both

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        parsed = self._prompt(state, request)
        # Both loads in one read of each endpoint. The ranking's are less the answers seen to end since
        # the scrape; the bound is judged on those without them: on the freshest loads a prefix left
        # its pod for another more often (virtual time, ``python -m bench.picksim``: the groups of the
        # cache-bound row on more pods, fewer hits).
        both = self._both_loads(endpoints)
        loads = [less for less, _ in both]
        n = len(loads)
        spread = 0.5 / (max(loads) + 1)
        scores = [0.5 - spread * load for load in loads]
        hashes = parsed.hashes
        if not hashes:  # under one block: no home, no credit
            return scores if self.has_peers else _least_recent_first(scores, endpoints, spread)
        bounded = [without for _, without in both]
        mean = sum(bounded) / n
        # Within the bound: at most loadBound x the mean load, plus one (an idle pool keeps its homes).
        limit = self.load_bound * mean + 1.0
        matches = self.index.leading_matches
        held = [matches(hashes, e.address) for e in endpoints]
        credit = 0.5 * parsed.credit
        share = _HELD_CREDIT * credit / len(hashes)
        if not self.has_peers:
            # Alone, this EPP's index knows every pod it sent the prefix to: the pods within the bound
            # that hold part of it compete by how much they hold (a leading system message every pod
            # holds counts the same everywhere), the load ranks them, and ties go to the pod sent a
            # request least recently. The home has no part: placing there would make a second copy.
            for i, count in enumerate(held):
                if count and bounded[i] <= limit:
                    scores[i] += share * count
            return _least_recent_first(scores, endpoints, spread)
        assert parsed.home is not None  # with peers, a prompt of a block or more has one
        home = self._home_of(request, parsed.home, endpoints)
        if not any(held):
            # A prefix this EPP has never sent anywhere: unless its home is more loaded than the mean,
            # it goes home (another replica may well have sent it there already, and placed by load
            # alone it would get a second copy on another pod); otherwise its home only breaks ties.
            if bounded[home] <= limit:
                scores[home] += credit if bounded[home] <= mean else credit * _FIRST_SIGHT
            return scores
        # The home within the bound gets the credit (another replica may have sent the prefix there).
        # Over the bound, pods within it that hold part of the prefix (by this EPP's index) take over,
        # by how much they hold; while the home is within it they get nothing, or each replica would
        # keep its own spills alive beside the home.
        if bounded[home] <= limit:
            scores[home] += credit
            return scores
        for i, count in enumerate(held):
            if count and bounded[i] <= limit:
                scores[i] += share * count
        return scores

    def post_pick(self, state: CycleState, request: LLMRequest, endpoint: Endpoint) -> None:
        prompt = self._prompt(state, request)
        hashes = prompt.hashes
        if hashes:
            if self.learns_from_cached_tokens and request.usage_reported:
                keep_prediction(
                    state, self.index.predict(endpoint.address, hashes, self.block_size, len(request.prompt))
                )
            self.index.add(endpoint.address, hashes)
            if self.share is not None:
                self.share(SharedPick(self.name, request.model, prompt.home, endpoint.address, hashes))

    def apply_shared(self, pick: SharedPick, hashes_agree: bool) -> None:
        """A peer's pick: its prefix's sighting (the balanced homes' active groups) and, where the peer
        hashes prompts alike, its blocks on the pod it picked (the learned index)."""
        if pick.key is not None and self.has_peers:
            self._balanced.sight(pick.model, pick.key, self._clock())
        if hashes_agree and pick.hashes:
            self.index.add(pick.address, pick.hashes)

    def forget(self, address: str) -> None:
        self.index.forget(address)
        self._node_ids.pop(address, None)
        self._balanced.forget(address)


def _least_recent_first(scores: list[float], endpoints: Sequence[Endpoint], spread: float) -> list[float]:
    """``scores`` with ties between equally loaded pods broken towards the pod this EPP sent a request
    to least recently: under a closed loop, the one whose oldest request most likely ended since the
    last scrape while its load still counts it (``spread``: one load unit's score). Pods sent to at
    the same time (never, say) stay tied, for the picker to break."""
    lasts = [e.load.last_sent() for e in endpoints]
    distinct = sorted(set(lasts))
    if len(distinct) < 2:
        return scores
    step = spread * _LEAST_RECENT / (len(distinct) - 1)
    rank = {t: len(distinct) - 1 - i for i, t in enumerate(distinct)}  # the least recent: the most
    return [score + step * rank[t] for score, t in zip(scores, lasts, strict=True)]
