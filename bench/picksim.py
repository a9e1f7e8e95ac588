"""``python -m bench.picksim``: the picker's placements in virtual time, free of a machine's noise.

On a shared 2-core machine a benchmark's figures move by 20% from run to run, which hides what a
change to the picker does to placement. This runs the EPP's real scheduler (its EndpointPickerConfig,
one instance per replica, each with its own endpoints, in-flight counts and learned index, and each
other's picks unless ``--replicas-alone``, as the EPP's replicas share them: ``epp.peers``) against
simulated pods in *virtual* time: the simulator's own KV block pool (``vllmsim.engine.BlockPool``),
its slots, FIFO queue and latency model (inter-token jitter from a seeded generator), with the same
defaults. Each replica scrapes every pod's ``waiting``/``running`` before the first request (a real
EPP is ready only once it has), then every ``scrape`` seconds (replicas out of phase), and counts the
requests it sent since. A request reaches its pod the moment it is routed and a scrape reads the
pods at once, so the EPP's window for sends a scrape may have missed (``SEND_SHOWS_AFTER``, 25 ms)
only counts some of them twice here. The answers are streams, as ``bench`` sends
them, their headers sent as soon as the pod takes the request, as vLLM and the simulator send them
(``--headers-at-first-token``: with the first token instead, as the simulator did before): a
replica counts its own in flight to the headers and sees an answer end only when it follows the
stream there (``--follow-up-to``, off by default as in the EPP); an end it sees comes off the pod's
load. With ``--not-streamed`` the answers come whole, as many API clients ask for
them: their headers come at their end, which each replica sees for its own requests. The clients
run a closed loop, request ``i`` through replica ``i % replicas``; the heterogeneous workload (pods
of their own configurations, as the matrix's hetero box) then runs an open loop as the matrix does:
Poisson arrivals at 0.8 x round robin's closed-loop rate, the same to every side, and the bursty
workload the bursty row's arrivals (a burst above round robin's rate). Nothing sleeps and
every random draw is seeded: the same arguments give the same figures, on any machine.

It prints, per replica count: the pods' prefix-cache hit rate (tokens), requests per virtual second,
TTFT p50, how many pods each prefix group was served by, and the groups per pod; for an open loop,
each side's TTFT p50 and p95 and their ratios to round robin's.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import math
import random
import statistics
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from epp.datastore import Endpoint, InFlight
from epp.requestcontrol.answer_ends import follows_stream
from epp.scheduling import LLMRequest, Scheduler, load_profile
from epp.scheduling.config import EndpointPickerConfig
from epp.scheduling.errors import ConfigError
from epp.scheduling.framework import PeerShared, SharedPick

from bench.stats import percentile
from bench.workloads import RequestSpec, Workload, WorkloadConfig, generate, poisson_arrivals
from vllmsim.config import SimConfig
from vllmsim.engine import BlockPool, block_hashes, load_factor

GEMMA = "google/gemma-2b-it"


@dataclass(eq=False)
class _Seq:
    spec: RequestSpec
    prompt_tokens: int
    hashes: list[int]
    anonymous: int
    sent: float
    cached_tokens: int = 0
    first_token: float | None = None
    done: float | None = None


@dataclass(eq=False)
class SimPod:
    """One simulated vLLM pod in virtual time: the simulator's block pool, slots and latency model."""

    address: str
    config: SimConfig
    pool: BlockPool = field(init=False)
    running: list[_Seq] = field(default_factory=list)
    waiting: deque[_Seq] = field(default_factory=deque)
    queried: int = 0
    hit: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def __post_init__(self) -> None:
        self.pool = BlockPool(self.config.kv_cache_blocks)

    def sequence(self, spec: RequestSpec, prompt: str, now: float) -> _Seq:
        c = self.config
        tokens = max(1, math.ceil(len(prompt) / c.chars_per_token))
        hashes = block_hashes(prompt, c.block_size * c.chars_per_token)
        blocks = math.ceil((tokens + spec.max_tokens) / c.block_size)
        return _Seq(spec, tokens, hashes, max(0, blocks - len(hashes)), now)

    def _can_start(self, seq: _Seq) -> bool:
        return len(self.running) < self.config.max_num_seqs and self.pool.fits(seq.hashes, seq.anonymous)

    def admit(self, seq: _Seq, now: float) -> list[tuple[float, _Seq]]:
        """Queue ``seq``; the (first token, last token) times of the sequences that start now."""
        self.waiting.append(seq)
        return self._schedule(now)

    def _schedule(self, now: float) -> list[tuple[float, _Seq]]:
        started = []
        while self.waiting and self._can_start(self.waiting[0]):
            seq = self.waiting.popleft()
            hits = self.pool.acquire(seq.hashes, seq.anonymous)
            seq.cached_tokens = self._cached_tokens(seq, hits)
            self.queried += seq.prompt_tokens
            self.hit += seq.cached_tokens
            self.running.append(seq)
            c, factor = self.config, load_factor(self.config, len(self.running))
            seq.first_token = now + self.prefill_s(seq.prompt_tokens - seq.cached_tokens) * factor
            itl = sum(max(0.0, self.rng.gauss(c.itl_ms, c.itl_sd_ms)) for _ in range(seq.spec.max_tokens - 1))
            seq.done = seq.first_token + itl / 1000 * factor
            started.append((seq.done, seq))
        return started

    def prefill_s(self, uncached_tokens: int) -> float:
        """The simulator's time to a first token for this many uncached prompt tokens, one running."""
        c = self.config
        return (c.prefill_overhead_ms + uncached_tokens * c.per_token_us / 1000) / 1000

    def _cached_tokens(self, seq: _Seq, blocks: int) -> int:
        """The prompt tokens ``blocks`` cached blocks spare (the last token is always computed)."""
        return min(blocks * self.config.block_size, seq.prompt_tokens - 1)

    def _uncached(self, seq: _Seq) -> int:
        return seq.prompt_tokens - self._cached_tokens(seq, self.pool.cached_prefix(seq.hashes))

    def first_token_at(self, seq: _Seq, now: float) -> float:
        """When ``seq``'s first token would come if it were sent here at ``now``, from this pod's own
        state: at once, at the batch it would join and with the prefix its cache holds, where a slot
        is free; otherwise once a slot frees, the running sequences' ends (known here) taken in turn
        by the queue ahead of it, each of those running as long as it would at a full batch."""
        c = self.config
        prefill = self.prefill_s(self._uncached(seq))
        if not self.waiting and self._can_start(seq):
            return now + prefill * load_factor(c, len(self.running) + 1)
        full = load_factor(c, c.max_num_seqs)
        ends = [s.done for s in self.running if s.done is not None]
        heapq.heapify(ends)
        for ahead in self.waiting:
            start = heapq.heappop(ends) if ends else now
            decode = (ahead.spec.max_tokens - 1) * c.itl_ms / 1000
            heapq.heappush(ends, start + (self.prefill_s(self._uncached(ahead)) + decode) * full)
        start = heapq.heappop(ends) if ends else now
        return max(start, now) + prefill * full

    def finish(self, seq: _Seq, now: float) -> list[tuple[float, _Seq]]:
        self.running.remove(seq)
        self.pool.release(seq.hashes, seq.anonymous)
        return self._schedule(now)


# A baseline's placement: (the request's number, the request, the pods as they are, the virtual time
# now) -> a pod's index.
Placement = Callable[[int, RequestSpec, Sequence[SimPod], float], int]


def _prompt(spec: RequestSpec) -> str:
    return "".join(content for _, content in spec.messages)


def round_robin(n: int, spec: RequestSpec, pods: Sequence[SimPod], now: float) -> int:
    return n % len(pods)


def soonest_first_token(n: int, spec: RequestSpec, pods: Sequence[SimPod], now: float) -> int:
    """An oracle, not a picker: the pod where ``spec``'s first token would come soonest, read from
    every pod's own state at this instant (free slots, the batch it would join, the prefix its cache
    holds, its speed, when its running sequences end: :meth:`SimPod.first_token_at`); ties rotate.
    No EPP can know all that (it sees scrapes, its own sends and the ends it follows). It is greedy,
    each request for itself with no look ahead, so it is not a proof of the best placement; it is
    what full information buys a picker that places one request at a time, as the EPP does."""
    prompt = _prompt(spec)
    at = [pod.first_token_at(pod.sequence(spec, prompt, now), now) for pod in pods]
    count = len(pods)
    return min(range(count), key=lambda i: (at[i], (i - n) % count))


class _Replica:
    """One EPP replica: its scheduler, its own view of the endpoints and its own in-flight counts."""

    def __init__(
        self, config: EndpointPickerConfig, pods: Sequence[SimPod], clock: Callable[[], float], replicas: int
    ) -> None:
        self.scheduler = Scheduler.from_config(config, rng=random.Random(0), replicas=replicas)
        for profile in self.scheduler.profiles.values():
            for scorer, _ in profile.scorers:
                if hasattr(scorer, "_clock"):  # the scorers read the virtual clock, not the machine's
                    scorer._clock = clock
        self.endpoints = []
        for pod in pods:
            host, port = pod.address.rsplit(":", 1)
            self.endpoints.append(Endpoint(name=pod.address, ip=host, port=int(port),
                                           models=frozenset({GEMMA}), models_known=True,
                                           load=InFlight()))  # fmt: skip

    def scrape(self, pods: Sequence[SimPod], now: float) -> None:
        for endpoint, pod in zip(self.endpoints, pods, strict=True):
            m = endpoint.metrics
            m.waiting, m.running = len(pod.waiting), len(pod.running)
            m.kv_cache_usage = pod.pool.usage()
            m.updated_at = m.sent_at = now  # sent and answered at once, no request on its way
            m.own_at = endpoint.load.count


def _share_picks(epps: Sequence[_Replica]) -> None:
    """Every replica's picks reach the same plugins of the others at once (one process: the same
    block hashes)."""
    for me in epps:
        for name, plugin in me.scheduler.shared.items():
            targets = [o.scheduler.shared[name] for o in epps if o is not me]

            def deliver(pick: SharedPick, targets: list[PeerShared] = targets) -> None:
                for target in targets:
                    target.apply_shared(pick, True)

            plugin.share = deliver


@dataclass
class SimResult:
    replicas: int
    hit_rate: float
    requests_per_s: float
    ttft_p50: float
    pods_per_group: float
    groups_per_pod: list[int]
    ttft_p95: float = 0.0


# When each replica first scrapes the pool: just before the first request, sent at 0.0 (a scrape
# stamped 0.0 would read as never scraped).
_FIRST_SCRAPE = -1e-9
# The matrix's cache box: pods of 16k tokens of KV cache (1,024 blocks of 16).
_SMALL_CACHE = SimConfig(models=[GEMMA], kv_cache_blocks=1024)


def simulate(
    specs: Sequence[RequestSpec], *, pods: int = 4, replicas: int = 1, concurrency: int = 16,
    sim: SimConfig | None = None, config: EndpointPickerConfig | None = None, scrape: float = 0.05,
    place: Placement | None = None, warmup: Sequence[RequestSpec] = (),
    follow_up_to: int = 0, streamed: bool = True, told_replicas: int | None = None,
    sims: Sequence[SimConfig] = (), arrivals: Sequence[float] | None = None,
    headers_at_first_token: bool = False, shared: bool = True,
) -> SimResult:  # fmt: skip
    """Serve ``specs`` (closed loop at ``concurrency``) through ``replicas`` EPPs onto ``pods`` pods;
    ``place(n, spec, pods, now)``, if given, picks the pod index instead of the EPP (a baseline).
    ``warmup`` is sent first, in the same closed loop, and left out of the figures. ``streamed``: the
    answers are streams, which the EPP sees end only when it follows them (``follow_up_to``).
    ``told_replicas``: the replica count each EPP is told (``--replicas``; default ``replicas``),
    which picks its placement rule (a lone replica's or the peers'). ``sims``: one configuration per
    pod, ``pods`` of them. ``arrivals``: an open loop instead, each spec sent at its offset (virtual
    seconds), whatever is still in flight. A stream's headers come as soon as its pod takes
    it (vLLM's way), or with its first token where ``headers_at_first_token``; an EPP that does not
    follow the stream counts it in flight until then. ``shared``: several replicas tell each other
    their picks (``epp.peers``, as the EPP does by default), each pick reaching the others at once
    (a datagram takes a few ms); False: each learns from its own picks alone."""
    sim = sim or _SMALL_CACHE
    if sims and pods != len(sims):
        raise ValueError(f"{len(sims)} pod configurations for {pods} pods")
    configs = list(sims) if sims else [sim] * pods
    if arrivals is not None and (warmup or len(arrivals) != len(specs)):
        raise ValueError("an open loop takes one arrival per spec and no warmup")
    config = config or load_profile("default")
    now = 0.0

    def clock() -> float:
        return now

    pool = [SimPod(f"10.0.0.{i + 1}:8000", configs[i], rng=random.Random(i)) for i in range(pods)]
    epps = [_Replica(config, pool, clock, told_replicas or replicas) for _ in range(replicas)]
    if shared and replicas > 1:
        _share_picks(epps)
    events: list[tuple[float, int, str, object]] = []  # (time, tiebreak, kind, payload)
    tick = itertools.count()
    # Every replica has scraped the idle pool before it takes a request (a real EPP is ready only
    # then); the scrapes go on every ``scrape`` seconds, the replicas out of phase.
    for r, epp in enumerate(epps):
        epp.scrape(pool, _FIRST_SCRAPE)
        heapq.heappush(events, (scrape * (r + 1) / replicas, next(tick), "scrape", r))
    queue = deque([*warmup, *specs])
    total, started_at = len(warmup) + len(specs), 0.0
    served: dict[int, Counter[str]] = defaultdict(Counter)
    ttfts: list[float] = []
    # A sequence's endpoint (as its replica sees it), its pod, and whether the EPP sees its answer end.
    owner: dict[int, tuple[Endpoint, SimPod, bool]] = {}
    sent = itertools.count()
    measured = {id(spec) for spec in specs}

    def let_go(endpoint: Endpoint) -> None:
        """The EPP lets go of a request while its answer runs (``Datastore.release``, early)."""
        endpoint.load.count -= 1
        endpoint.load.last_early = now

    def send() -> None:
        if not queue:
            return
        spec = queue.popleft()
        n = next(sent)
        epp = epps[n % replicas]
        prompt = _prompt(spec)
        request = LLMRequest(
            f"r{spec.index}", spec.model, prompt, streamed=streamed, max_tokens=spec.max_tokens
        )
        picked = (epp.endpoints[place(n, spec, pool, now)] if place is not None
                  else epp.scheduler.schedule(request, epp.endpoints).endpoint)  # fmt: skip
        assert picked is not None
        endpoint = picked
        endpoint.load.routed(now)
        pod = next(p for p in pool if p.address == endpoint.address)
        seq = pod.sequence(spec, prompt, now)
        followed = not streamed or follows_stream(request, follow_up_to)
        owner[id(seq)] = (endpoint, pod, followed)
        if not followed and not headers_at_first_token:
            let_go(endpoint)  # its headers came back at once: the pod's own metrics count it
        served[spec.group if spec.group is not None else -1][pod.address] += 1
        started(pod.admit(seq, now))

    def started(done: list[tuple[float, _Seq]]) -> None:
        for finish, seq in done:
            assert seq.first_token is not None
            heapq.heappush(events, (seq.first_token, next(tick), "first", seq))
            heapq.heappush(events, (finish, next(tick), "done", seq))

    if arrivals is None:
        for _ in range(concurrency):
            send()
    else:
        for at in arrivals:
            heapq.heappush(events, (at, next(tick), "arrive", None))
    finished = 0
    while events and finished < total:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            send()
        elif kind == "scrape":
            assert isinstance(payload, int)
            epps[payload].scrape(pool, now)
            heapq.heappush(events, (now + scrape, next(tick), "scrape", payload))
        elif kind == "first":
            assert isinstance(payload, _Seq)
            endpoint, _, followed = owner[id(payload)]
            if not followed and headers_at_first_token:
                let_go(endpoint)  # the stream began: the pod's own metrics count it from here
            if id(payload.spec) in measured:
                ttfts.append(now - payload.sent)
        else:
            assert isinstance(payload, _Seq)
            endpoint, pod, followed = owner.pop(id(payload))
            if followed:  # the EPP saw it end: its headers, or a stream's last byte
                endpoint.load.count -= 1
                endpoint.load.answer_ended(now)
            started(pod.finish(payload, now))
            finished += 1
            if finished == len(warmup):  # the measured part starts: its own counters
                started_at = now
                for p in pool:
                    p.queried = p.hit = 0
                served.clear()
            if arrivals is None:
                send()
    groups = {g: c for g, c in served.items() if g >= 0}
    mains = Counter(c.most_common(1)[0][0] for c in groups.values())
    return SimResult(
        replicas=replicas,
        hit_rate=sum(p.hit for p in pool) / max(1, sum(p.queried for p in pool)),
        requests_per_s=len(specs) / (now - started_at) if now > started_at else 0.0,
        ttft_p50=statistics.median(ttfts) if ttfts else 0.0,
        ttft_p95=percentile(ttfts, 95) or 0.0,
        pods_per_group=statistics.mean(len(c) for c in groups.values()) if groups else 0.0,
        groups_per_pod=sorted(mains.get(p.address, 0) for p in pool),
    )


def cache_bound(seed: int = 3, salt: str = "", groups: int = 16, requests: int = 320) -> list[RequestSpec]:
    """The matrix's cache-bound row (16 groups of a 2,000-token system prompt, 320 requests); with
    ``groups=4, requests=160`` its prefix-fits row."""
    return generate(WorkloadConfig(
        workload=Workload.SHARED_PREFIX, models=[GEMMA], requests=requests, groups=groups,
        prompts_per_group=16, system_prompt_len=2000, question_len=32, max_tokens=16, seed=seed,
        prefix_salt=salt,
    ))  # fmt: skip


def long_prompt(seed: int = 4, salt: str = "") -> list[RequestSpec]:
    """The matrix's long-prompt row: 48 one-off prompts of 50,000 tokens."""
    return generate(WorkloadConfig(
        workload=Workload.LONG_PROMPT, models=[GEMMA], requests=48, prompt_len=50_000, max_tokens=16,
        seed=seed, prefix_salt=salt,
    ))  # fmt: skip


def random_prompts(seed: int = 5, salt: str = "", requests: int = 120) -> list[RequestSpec]:
    """The matrix's bursty row: random prompts of one model (its closed loop: 120)."""
    return generate(WorkloadConfig(models=[GEMMA], requests=requests, max_tokens=32, seed=seed,
                                   prefix_salt=salt))  # fmt: skip


def heterogeneous(seed: int = 6, salt: str = "") -> list[RequestSpec]:
    """The matrix's heterogeneous row: 160 random prompts of one model."""
    return generate(WorkloadConfig(models=[GEMMA], requests=160, max_tokens=32, seed=seed, prefix_salt=salt))


# The matrix's long box (bench.matrix's _LONG): four pods of 4 slots, 64k-token context.
_LONG = SimConfig(models=[GEMMA], max_num_seqs=4, kv_cache_blocks=8192, max_model_len=65536, per_token_us=10)
# The matrix's hetero box: three pods of 8 slots and one (the first) with 4, twice as slow
# (bench.matrix's _EIGHT_SLOTS and _SLOW_HALF: a test checks they agree).
_FAST = SimConfig(models=[GEMMA], max_num_seqs=8)
_SLOW_HALF = SimConfig(models=[GEMMA], max_num_seqs=4, itl_ms=24, prefill_overhead_ms=60, per_token_us=500)
# Of round robin's closed-loop rate, the open loop's arrival rate (bench.matrix.OFFERED_FRACTION).
OFFERED = 0.8


def scaled(sim: SimConfig, time_scale: float) -> SimConfig:
    """``sim`` with every delay multiplied by ``time_scale`` (the simulator's --time-scale)."""
    fields = ("itl_ms", "itl_sd_ms", "prefill_overhead_ms", "per_token_us")
    return sim.model_copy(update={name: getattr(sim, name) * time_scale for name in fields})


@dataclass(frozen=True)
class Setup:
    about: str
    specs: Callable[[str], list[RequestSpec]]
    concurrency: int
    sim: SimConfig
    # The baselines besides round robin: (label, placement).
    baselines: tuple[tuple[str, Placement], ...] = ()
    # One configuration per pod, when they differ (``sim`` is then unused).
    sims: tuple[SimConfig, ...] = ()
    # Requests of an open-loop phase (Poisson arrivals at OFFERED x round robin's closed-loop rate,
    # TTFT compared), as the matrix runs it; 0: none.
    open_requests: int = 0
    # Instead, the open loop of the matrix's bursty row: its arrivals, shaped from round robin's
    # closed-loop rate, as many as they come to (the specs, for a salt and a count).
    bursty: Callable[[str, int], list[RequestSpec]] | None = None
    # Every closed loop first sends this many of its requests unmeasured, as the matrix's cache-bound
    # rows do (their ceiling is measured warm, so the sides are too).
    warmup: int = 0


# The placement bound on rows where first tokens or free slots decide (not a cache's contents).
_ORACLE = ("an oracle: the soonest first token by every pod's own state", soonest_first_token)

SETUPS = {
    "cache-bound": Setup(
        "16 groups x 2,000-token prefix, 4 pods of 16k tokens, c=16",
        lambda salt: cache_bound(salt=salt), 16, _SMALL_CACHE,
        (("groups pinned 4 per pod (the best placement)", lambda n, spec, pods, now: (spec.group or 0) % 4),),
        warmup=96,
    ),
    "prefix-fits": Setup(
        "4 groups x 2,000-token prefix, 160 requests, 4 pods of 16k tokens (each holds all 4), c=16",
        lambda salt: cache_bound(salt=salt, groups=4, requests=160), 16, _SMALL_CACHE, (_ORACLE,),
    ),
    "long-prompt": Setup(
        "48 one-off 50,000-token prompts, 4 pods of 4 slots, c=8",
        lambda salt: long_prompt(salt=salt), 8, _LONG, (_ORACLE,),
    ),
    "bursty": Setup(
        "120 random prompts, 4 pods of 4 slots, c=16 (as many as the slots), then the matrix's bursty "
        "arrivals (a burst above round robin's rate)",
        lambda salt: random_prompts(salt=salt), 16, _LONG, (_ORACLE,),
        bursty=lambda salt, count: random_prompts(salt=salt, requests=count),
    ),
    "heterogeneous": Setup(
        "160 random prompts, 3 pods of 8 slots and one with 4, twice as slow; closed loop c=32, then "
        f"96 Poisson arrivals at {OFFERED:g} x round robin's rate",
        lambda salt: heterogeneous(salt=salt), 32, _FAST,
        (("round robin over the three fast pods (never the slow one)", lambda n, spec, pods, now: 1 + n % 3),
         _ORACLE),
        sims=(_SLOW_HALF, _FAST, _FAST, _FAST), open_requests=96,
    ),
}


def _line(label: str, runs: Sequence[SimResult], against: Sequence[SimResult] = ()) -> str:
    """A closed loop's figures; with ``against`` (round robin's runs), its rate as a ratio to theirs."""
    mean = statistics.mean
    rate = mean(r.requests_per_s for r in runs)
    ratio = f" ({rate / mean(r.requests_per_s for r in against):.3f}x round robin's)" if against else ""
    return (
        f"  {label}: {rate:.1f} req/s{ratio}, hit rate "
        f"{mean(r.hit_rate for r in runs):.3f} (min {min(r.hit_rate for r in runs):.3f}), TTFT p50 "
        f"{mean(r.ttft_p50 for r in runs) * 1000:.0f} ms, pods per group "
        f"{mean(r.pods_per_group for r in runs):.2f}"
    )


def with_scorer_parameters(config: EndpointPickerConfig, **parameters: object) -> EndpointPickerConfig:
    """``config`` with these parameters (config spelling) set on every prefix-affinity-scorer;
    ConfigError (from the scorer's own checks) when one is not a value it takes."""
    plugins = [
        p.model_copy(update={"parameters": {**(p.parameters or {}), **parameters}})
        if p.type == "prefix-affinity-scorer" else p
        for p in config.plugins
    ]
    changed = config.model_copy(update={"plugins": plugins})
    _ = changed.plan  # compiled now, so a bad value is refused before anything runs
    return changed


def bursty_arrivals(capacity: float, time_scale: float, seed: int) -> list[float]:
    """The matrix's bursty row's arrivals (``bench.matrix``'s own shape) for round robin's
    closed-loop rate ``capacity``."""
    from bench.matrix import rows  # the matrix pulls in its report's plotting: only when asked

    shape = next(r.bursty for r in rows() if r.name == "bursty")
    assert shape is not None
    return shape.arrivals(capacity, time_scale, seed)


def _open_loop(
    setup: Setup, salts: Sequence[str], capacities: Sequence[float], replicas: Iterable[int],
    serve: Callable[..., SimResult], time_scale: float = 1.0,
) -> None:  # fmt: skip
    """The matrix's open-loop phase: each variant's Poisson arrivals at OFFERED x round robin's
    closed-loop rate in that variant (or, for the bursty setup, the bursty row's arrivals), the same
    to every side; TTFT p50 and p95, and the ratios. ``serve``: :func:`simulate` with the pods and
    the EPP's settings given."""
    offered = [OFFERED * c for c in capacities]
    loads: list[tuple[list[RequestSpec], list[float]]] = []
    for i, (salt, capacity) in enumerate(zip(salts, capacities, strict=True)):
        if setup.bursty is not None:
            arrivals = bursty_arrivals(capacity, time_scale, seed=i)
            loads.append((setup.bursty(salt, len(arrivals)), arrivals))
        else:
            specs = setup.specs(salt)[: setup.open_requests]
            loads.append((specs, poisson_arrivals(offered[i], len(specs), seed=i)))

    def runs(replicas: int, place: Placement | None = None) -> list[SimResult]:
        return [serve(specs, replicas=replicas, arrivals=arrivals, place=place) for specs, arrivals in loads]

    def line(label: str, results: Sequence[SimResult], against: Sequence[SimResult] | None = None) -> str:
        p50 = statistics.mean(r.ttft_p50 for r in results)
        p95 = statistics.mean(r.ttft_p95 for r in results)
        text = f"  {label}: TTFT p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"
        if against is not None:
            base50 = statistics.mean(r.ttft_p50 for r in against)
            base95 = statistics.mean(r.ttft_p95 for r in against)
            text += f" ({p50 / base50:.2f}x, {p95 / base95:.2f}x round robin's)"
        return text

    if setup.bursty is not None:
        print(f"bursty open loop, {statistics.mean(len(a) for _, a in loads):.0f} arrivals (the matrix's "
              "bursty row's shape, from round robin's closed-loop rate):")
    else:
        print(f"open loop, {setup.open_requests} arrivals at {statistics.mean(offered):.1f} req/s "
              f"({OFFERED:g} x round robin's closed-loop rate):")
    rr = runs(1, round_robin)
    print(line("round robin", rr))
    for label, place in setup.baselines:
        print(line(label, runs(1, place), rr))
    for count in replicas:
        print(line(f"gateway, {count} EPP replica{'s' if count > 1 else ''}", runs(count), rr))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.picksim", description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=sorted(SETUPS), default="cache-bound")
    parser.add_argument("--replicas", default="1,2", help="comma-separated EPP replica counts")
    parser.add_argument("--salts", type=int, default=12, help="workload variants (prefix salts), averaged")
    parser.add_argument("--not-streamed", action="store_true",
                        help="the answers come whole, their headers at their end (default: streams, as "
                        "bench sends them)")
    parser.add_argument("--follow-up-to", type=int, default=0,
                        help="the EPP's --follow-answers-up-to: streams of at most this many tokens are "
                        "followed to their end (default 0: none, the EPP's default)")
    parser.add_argument("--headers-at-first-token", action="store_true",
                        help="a stream's headers come with its first token, as the simulator sent them "
                        "before (default: as soon as the pod takes it, as vLLM sends them)")
    parser.add_argument("--load-bound", type=float,
                        help="run the default profile with this prefix-affinity-scorer loadBound")
    parser.add_argument("--waiting-weight", type=int,
                        help="run the default profile with this prefix-affinity-scorer waitingWeight")
    parser.add_argument("--replicas-alone", action="store_true",
                        help="replicas do not tell each other their picks (default: they do, as the "
                        "EPP's replicas with --peers)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="every simulated delay times this, as the simulator's --time-scale (the "
                        "scrape interval stays 50 ms)")
    args = parser.parse_args(argv)
    if args.time_scale <= 0:
        parser.error("--time-scale must be > 0")
    if args.follow_up_to and args.not_streamed:
        parser.error("--follow-up-to is for streams: an answer that is not streamed ends at its headers")
    if args.headers_at_first_token and args.not_streamed:
        parser.error("--headers-at-first-token is for streams: an answer that is not streamed sends its "
                     "headers at its end")
    setup = SETUPS[args.workload]
    config = None
    changes = {name: value for name, value in (("loadBound", args.load_bound),
                                               ("waitingWeight", args.waiting_weight)) if value is not None}
    if changes:
        try:
            config = with_scorer_parameters(load_profile("default"), **changes)
        except ConfigError as e:
            parser.error(str(e))
    salts = [f"salt {s} " for s in range(args.salts)]
    sim = scaled(setup.sim, args.time_scale)
    sims = tuple(scaled(s, args.time_scale) for s in setup.sims)

    serve = functools.partial(simulate, sim=sim, sims=sims, follow_up_to=args.follow_up_to,
                              streamed=not args.not_streamed, config=config,
                              headers_at_first_token=args.headers_at_first_token,
                              shared=not args.replicas_alone)  # fmt: skip

    def runs(replicas: int, place: Placement | None = None) -> list[SimResult]:
        return [serve(specs, replicas=replicas, concurrency=setup.concurrency, place=place,
                      warmup=specs[: setup.warmup])
                for specs in map(setup.specs, salts)]  # fmt: skip

    about = "".join(f", {name} {value:g}" for name, value in changes.items())
    about += f", closed loops after a warm pass of {setup.warmup} requests" if setup.warmup else ""
    about += "" if args.time_scale == 1 else f", time scale {args.time_scale:g}"
    about += ", replicas alone (no shared picks)" if args.replicas_alone else ""
    print(f"{args.workload} ({setup.about}), virtual time, mean of {args.salts} workload variants{about}")
    rr = runs(1, round_robin)
    print(_line("round robin", rr))
    best = []
    for label, place in setup.baselines:
        best = runs(1, place)
        print(_line(label, best, rr))
    ceiling_rate = None
    if args.workload == "cache-bound":
        # bench matrix's ceiling: round robin over warm caches with the 4 groups that fit every pod.
        fits = cache_bound(salt="ceiling ", groups=4, requests=96 + 320)
        ceiling = simulate(fits[96:], warmup=fits[:96], sim=sim, place=round_robin)
        print(_line("4 groups that fit, warm caches (bench matrix's ceiling)", [ceiling]))
        ceiling_rate = ceiling.requests_per_s
    rates = {}
    for replicas in (int(r) for r in args.replicas.split(",")):
        results = runs(replicas)
        rates[replicas] = statistics.mean(r.requests_per_s for r in results)
        print(_line(f"gateway, {replicas} EPP replica{'s' if replicas > 1 else ''}", results, rr))
    if 1 in rates:
        for replicas, rate in rates.items():
            if replicas != 1:
                print(f"  {replicas} replicas / 1 replica: {rate / rates[1]:.3f}")
    if setup.open_requests or setup.bursty is not None:
        _open_loop(setup, salts, [r.requests_per_s for r in rr], rates, serve, args.time_scale)
    if ceiling_rate:
        placed = statistics.mean(r.requests_per_s for r in best)
        print(f"  of the ceiling: best placement {placed / ceiling_rate:.2f}, "
              + ", ".join(f"{k} replica(s) {v / ceiling_rate:.2f}" for k, v in rates.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
