"""The flow-control queue: requests wait in the EPP, fairly, until a pod that can serve them has room.

A request waits when its model's queue is not empty (it takes its turn) or when every endpoint that
could serve it is saturated, or none serves it yet (a model waking from zero pods). The dispatcher
then lets requests go as endpoints have room:

- **by priority**: higher bands first; a lower band goes only where a higher one cannot (another
  model's endpoints have room, or the higher band's model has none);
- **fairly within a band**: round robin across fairness ids (tenants: the API key's name, else the
  fairness header) — per tenant and model, so a tenant's requests for a model without room do not
  hold up its requests for another — first come first served within one; one tenant's thousand
  queued requests do not delay another tenant's next one by more than a turn, and a tenant new to
  the queue takes the next turn;
- **a slot kept for the lighter tenant**: a model's last free slot goes only to a tenant holding
  less than its share of the model's slots (their learnt total over the tenants active for it), so
  a tenant alone uses them all, and with another active it leaves one free for the other's next
  request;
- **as much as there is room**: an endpoint has room while its metrics are fresh and its KV cache is
  under the detector's threshold, and then as many requests as it has free slots (plus the detector's
  queue depth): its slots are learnt from its metrics (``running`` seen unchanged in two successive
  scrapes while requests wait there is the slot count, vLLM's ``max_num_seqs`` or what its KV cache
  holds), its busy slots are ``running + waiting`` from its last scrape, plus the requests sent to it
  that the scrape cannot show yet, less the answers that ended since (the EPP follows a held
  request's answer to its end, so its slot is free at once rather than at the next scrape). Until
  its slots are known, an endpoint has room while its waiting queue plus the unseen sends is at
  most the queue depth.

Without the slot rule every pod keeps one more request waiting in its own FIFO queue than it can
run, and a light tenant's request, let go first, still lands behind a heavy tenant's in that queue.

Bounds: a band holds at most its ``maxRequests``/``maxBytes``, the queue at most the global ones;
a request that finds its band full sheds the newest request of a lower band, or is itself refused
(429). A request waits at most ``defaultRequestTTL`` while its model has endpoints (then 429) and
``noEndpointRequestTTL`` while it has none (then 503); both answers carry ``Retry-After``. A client
that goes away (its stream cancelled) leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from epp.datastore import Datastore, Endpoint
from epp.flowcontrol.config import FlowControlConfig
from epp.flowcontrol.metrics import FlowControlMetrics
from epp.refusals import RequestError
from epp.scheduling.saturation import SaturationDetector

Clock = Callable[[], float]
# How often the dispatcher looks again while requests wait (metrics change without an event).
TICK_SECONDS = 0.005
# Answer ends remembered per endpoint to free their slots before the next scrape shows it.
_MAX_ENDS = 256
# A tenant counts as active for a model while it has requests queued or in flight, and this long after.
ACTIVE_SECONDS = 1.0
# Idle tenants are forgotten once more than this many are remembered.
_MAX_TENANTS = 1024


@dataclass(eq=False, slots=True)
class Waiter:
    model: str
    fairness_id: str
    priority: int
    size: int
    subset: frozenset[str] | None
    enqueued_at: float
    future: asyncio.Future[None]
    deadline: float = math.inf
    no_endpoint: bool = False
    done: bool = False
    # Where it was let go: the endpoints that had a free slot, and the one counted as taken (until it
    # is routed, when its send counts instead).
    where: frozenset[str] = frozenset()
    taken: str = ""


@dataclass(slots=True)
class _Pod:
    """What the queue learnt of one endpoint: its slots (0: not known yet), the last scrape it looked
    at, and when the answers it followed there ended."""

    slots: int = 0
    scraped_at: float = 0.0
    running: int = 0
    waiting: int = 0
    ends: deque[float] = field(default_factory=lambda: deque(maxlen=_MAX_ENDS))

    def learn(self, running: int, waiting: int, scraped_at: float) -> None:
        """A scrape: ``running`` unchanged across two successive scrapes with requests waiting at
        the pod is as many as it can run (the largest such reading is kept)."""
        if scraped_at == self.scraped_at:
            return
        if waiting > 0 and self.waiting > 0 and running == self.running and self.scraped_at:
            self.slots = max(self.slots, running)
        self.scraped_at, self.running, self.waiting = scraped_at, running, waiting

    def ended_since(self, t: float) -> int:
        ends = self.ends
        while ends and ends[0] <= t:
            ends.popleft()
        return len(ends)


@dataclass(slots=True)
class _Tenant:
    """One tenant's requests for one model that this EPP let go and whose answers have not ended."""

    in_flight: int = 0
    last_seen: float = 0.0


@dataclass(slots=True)
class _Band:
    priority: int
    request_limit: int
    byte_limit: int
    # (fairness id, model) -> its waiters in arrival order; the dict's order is the round robin's. A
    # tenant's requests for a model without room do not hold up its requests for another model.
    flows: OrderedDict[tuple[str, str], deque[Waiter]] = field(default_factory=OrderedDict)
    count: int = 0
    bytes: int = 0


def full(reason: str, message: str, retry_after: int = 1) -> RequestError:
    return RequestError(429, message, None, reason, retry_after=retry_after)


class FlowController:
    """One pool's queue and its dispatcher."""

    def __init__(
        self,
        config: FlowControlConfig,
        datastore: Datastore,
        detector: SaturationDetector,
        metrics: FlowControlMetrics | None = None,
        *,
        clock: Clock = time.monotonic,
        tick: float = TICK_SECONDS,
    ) -> None:
        self.config = config
        self._datastore = datastore
        self._detector = detector
        self._metrics = metrics
        self._clock = clock
        self._tick = tick
        self._bands: dict[int, _Band] = {}
        self._order: list[int] = []  # priorities, highest first
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._sequence = itertools.count()
        self._by_model: dict[str, int] = {}
        self.count = 0
        self.bytes = 0
        # What was learnt of each address: its slots, its answers that ended since its last scrape.
        self._pods: dict[str, _Pod] = {}
        # Slots counted as taken by let-go requests not routed yet, by address.
        self._taken: dict[str, int] = {}
        # (fairness id, model) -> its requests in flight; for the slot kept for a tenant under its share.
        self._tenants: dict[tuple[str, str], _Tenant] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- what the director asks ------------------------------------------------------------------
    def free(self, model: str, subset: frozenset[str] | None, fairness_id: str = "") -> dict[str, int]:
        """Where a request of ``fairness_id`` for ``model`` may go now: its endpoints' free slots by
        address (those with none left out); empty when it must wait (others for it wait already, or
        none has room, or only the slot kept for a tenant under its share is free and this one is not)."""
        if self._by_model.get(model):
            return {}
        now = self._clock()
        candidates = self._candidates(model, subset)
        rooms = {e.address: self._endpoint_room(e, now) for e in candidates}
        if not self._may_take(fairness_id, model, candidates, sum(rooms.values()), now):
            return {}
        return {address: room for address, room in rooms.items() if room > 0}

    def must_wait(self, model: str, subset: frozenset[str] | None, fairness_id: str = "") -> bool:
        """Whether a request for ``model`` waits: others for it wait already, or it has no room."""
        return not self.free(model, subset, fairness_id)

    def started(self, fairness_id: str, model: str) -> None:
        """A request of ``fairness_id`` for ``model`` was let go (or needed no wait)."""
        tenant = self._tenants.get((fairness_id, model))
        if tenant is None:
            tenant = self._tenants[(fairness_id, model)] = _Tenant()
        tenant.in_flight += 1
        tenant.last_seen = self._clock()

    def finished(self, fairness_id: str, model: str) -> None:
        """That request's exchange is over (answered, refused or gone)."""
        tenant = self._tenants.get((fairness_id, model))
        if tenant is None:
            return
        tenant.in_flight -= 1
        tenant.last_seen = now = self._clock()
        if len(self._tenants) > _MAX_TENANTS:
            self._forget_idle_tenants(now)

    def _forget_idle_tenants(self, now: float) -> None:
        idle = [key for key, t in self._tenants.items()
                if t.in_flight <= 0 and now - t.last_seen > ACTIVE_SECONDS]
        for key in idle:
            del self._tenants[key]

    def _may_take(self, fairness_id: str, model: str, candidates: Sequence[Endpoint], room: int,
                  now: float) -> bool:
        """Whether ``fairness_id`` may take one of ``room`` free slots of ``model``: any but the last,
        which is kept for a tenant holding less than its share of the model's slots (their learnt
        total over the tenants active for the model: in flight, queued, or seen within
        ``ACTIVE_SECONDS``). A tenant alone takes every slot; with a second one active, the first
        leaves one free for it, so the second's next request finds a slot at once instead of waiting
        for one of the first's answers to end."""
        if room > 1:
            return True
        total = 0
        for endpoint in candidates:
            pod = self._pods.get(endpoint.address)
            if pod is None or not pod.slots:
                return True  # slots not known: nothing is kept
            total += pod.slots
        active = {fairness_id}
        for (tenant_id, tenant_model), tenant in self._tenants.items():
            if tenant_model == model and (tenant.in_flight > 0 or now - tenant.last_seen <= ACTIVE_SECONDS):
                active.add(tenant_id)
        for band in self._bands.values():
            active.update(tenant_id for tenant_id, flow_model in band.flows if flow_model == model)
        mine = self._tenants.get((fairness_id, model))
        held = 0 if mine is None else mine.in_flight
        return held * len(active) < total

    async def admit(self, model: str, subset: frozenset[str] | None, fairness_id: str, priority: int,
                    size: int) -> frozenset[str]:
        """Return where the request may be scheduled (the endpoints with a free slot) once it may;
        raise the 429/503 ``RequestError`` otherwise. Route it before the next ``await``."""
        free = self.free(model, subset, fairness_id)
        if free:
            return frozenset(free)
        return await self.wait(model, subset, fairness_id, priority, size)

    async def wait(self, model: str, subset: frozenset[str] | None, fairness_id: str, priority: int,
                   size: int) -> frozenset[str]:
        """Queue the request and return where it may go when it is let go (``free`` was empty).
        The caller routes it before its next ``await``: its slot is held for it until then."""
        waiter = self._enqueue(model, subset, fairness_id, priority, size)
        self.dispatch()  # a slot kept for this tenant, or a turn that is its own, goes at once
        try:
            await waiter.future
        except asyncio.CancelledError:
            if not waiter.done:
                self._leave(waiter, "cancelled")
            raise
        finally:
            self._untake(waiter)
        return waiter.where

    def _untake(self, waiter: Waiter) -> None:
        """The let-go ``waiter`` is routed (or gone): its send, if any, counts from now on."""
        if waiter.taken:
            left = self._taken.get(waiter.taken, 0) - 1
            if left > 0:
                self._taken[waiter.taken] = left
            else:
                self._taken.pop(waiter.taken, None)
            waiter.taken = ""

    def ended(self, address: str) -> None:
        """An answer from ``address`` ended (the EPP saw its last byte): its slot is free now; a
        waiting request may take it at once, before the next scrape shows it."""
        pod = self._pods.get(address)
        if pod is None:
            pod = self._pods[address] = _Pod()
        pod.ends.append(self._clock())
        if self.count:
            self.dispatch()

    def slots(self, address: str) -> int:
        """The slots learnt for ``address`` (0: not known yet)."""
        pod = self._pods.get(address)
        return 0 if pod is None else pod.slots

    def forget(self, address: str) -> None:
        self._pods.pop(address, None)

    # -- capacity -----------------------------------------------------------------------------------
    def _candidates(self, model: str, subset: frozenset[str] | None) -> Sequence[Endpoint]:
        serving = self._datastore.view.by_model.get(model, ())
        if subset is not None:
            serving = tuple(e for e in serving if e.address in subset)
        return serving

    def _endpoint_room(self, endpoint: Endpoint, now: float) -> int:
        """How many more requests ``endpoint`` can take now: its free slots (plus the queue depth)."""
        metrics = endpoint.metrics
        pod = self._pods.get(endpoint.address)
        if pod is None:
            pod = self._pods[endpoint.address] = _Pod()
        pod.learn(metrics.running, metrics.waiting, metrics.updated_at)
        detector = self._detector
        if not detector.has_capacity(endpoint, now):
            return 0
        unseen = endpoint.load.sent_since(metrics.unseen_sends_after)
        unseen += self._taken.get(endpoint.address, 0)
        if not pod.slots:
            return max(0, detector.queue_depth_threshold + 1 - metrics.waiting - unseen)
        busy = metrics.running + metrics.waiting + unseen - pod.ended_since(metrics.updated_at)
        return max(0, pod.slots + detector.queue_depth_threshold - busy)

    # -- the queue ----------------------------------------------------------------------------------
    def _band(self, priority: int) -> _Band:
        band = self._bands.get(priority)
        if band is None:
            limits = self.config.band(priority)
            band = self._bands[priority] = _Band(priority, limits.request_limit, limits.byte_limit)
            self._order = sorted(self._bands, reverse=True)
        return band

    def _enqueue(self, model: str, subset: frozenset[str] | None, fairness_id: str, priority: int,
                 size: int) -> Waiter:
        band = self._band(priority)
        while not self._fits(band, size):
            if not self._shed_below(priority):
                raise full("queue_full", f"The gateway's queue for '{model}' is full; retry later.")
        now = self._clock()
        no_endpoint = not self._candidates(model, subset)
        ttl = self.config.no_endpoint_request_ttl if no_endpoint else self.config.default_request_ttl
        waiter = Waiter(model, fairness_id, priority, size, subset, now,
                        asyncio.get_running_loop().create_future(), now + ttl, no_endpoint)
        flow = band.flows.get((fairness_id, model))
        if flow is None:
            # A tenant with nothing queued takes the next turn: it waited for none of the others'.
            flow = band.flows[(fairness_id, model)] = deque()
            band.flows.move_to_end((fairness_id, model), last=False)
        flow.append(waiter)
        band.count += 1
        band.bytes += size
        self.count += 1
        self.bytes += size
        self._by_model[model] = self._by_model.get(model, 0) + 1
        if math.isfinite(waiter.deadline):
            heapq.heappush(self._deadlines, (waiter.deadline, next(self._sequence), waiter))
        if self._metrics is not None:
            self._metrics.queued(fairness_id, priority, model, size, 1)
        self._start()
        return waiter

    def _fits(self, band: _Band, size: int) -> bool:
        config = self.config
        if config.max_requests and self.count + 1 > config.max_requests:
            return False
        if config.max_bytes and self.bytes + size > config.max_bytes:
            return False
        return band.count + 1 <= band.request_limit and band.bytes + size <= band.byte_limit

    def _shed_below(self, priority: int) -> bool:
        """Refuse the newest request of the lowest band below ``priority``; False if there is none."""
        for lower in reversed(self._order):
            if lower >= priority:
                return False
            band = self._bands[lower]
            newest: Waiter | None = None
            for flow in band.flows.values():
                if flow and (newest is None or flow[-1].enqueued_at >= newest.enqueued_at):
                    newest = flow[-1]
            if newest is not None:
                self._finish(newest, "rejected", full(
                    "shed", f"A request of higher priority took the queue's place for '{newest.model}'; "
                    "retry later.",
                ))
                return True
        return False

    def _leave(self, waiter: Waiter, outcome: str) -> None:
        """Take ``waiter`` out of the queue and count how it left."""
        waiter.done = True
        band = self._bands[waiter.priority]
        key = (waiter.fairness_id, waiter.model)
        flow = band.flows.get(key)
        if flow is not None:
            with contextlib.suppress(ValueError):
                flow.remove(waiter)
            if not flow:
                del band.flows[key]
        band.count -= 1
        band.bytes -= waiter.size
        self.count -= 1
        self.bytes -= waiter.size
        left = self._by_model[waiter.model] - 1
        if left:
            self._by_model[waiter.model] = left
        else:
            del self._by_model[waiter.model]
        if self._metrics is not None:
            self._metrics.queued(waiter.fairness_id, waiter.priority, waiter.model, waiter.size, -1)
            self._metrics.left(waiter.fairness_id, waiter.priority, waiter.model, outcome,
                               self._clock() - waiter.enqueued_at)

    def _finish(self, waiter: Waiter, outcome: str, error: RequestError | None = None) -> None:
        self._leave(waiter, outcome)
        if waiter.future.done():
            return
        if error is None:
            waiter.future.set_result(None)
        else:
            waiter.future.set_exception(error)

    # -- the dispatcher -----------------------------------------------------------------------------
    def _start(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="flow-control")

    async def _run(self) -> None:
        while True:
            if not self.count:
                self._wake.clear()
                await self._wake.wait()
            self.dispatch()
            await asyncio.sleep(self._tick)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def dispatch(self) -> int:
        """Expire what waited too long, then let go what has room; how many were let go."""
        now = self._clock()
        self._expire(now)
        let_go = 0
        rooms: dict[str, int] = {}
        for priority in self._order:
            band = self._bands[priority]
            let_go += self._dispatch_band(band, rooms, now)
        if self._metrics is not None:
            self._metrics.saturation(bool(self.count))
        return let_go

    def _dispatch_band(self, band: _Band, rooms: dict[str, int], now: float) -> int:
        """Round robin across the band's flows: each turn, a flow's first request goes if one of its
        model's endpoints has a free slot (``rooms``: by address, as this pass found them); a flow
        whose first request cannot go waits for a later pass."""
        let_go = 0
        blocked: set[tuple[str, str]] = set()
        while len(blocked) < len(band.flows):
            progressed = False
            for flow_key in list(band.flows):
                if flow_key in blocked:
                    continue
                flow = band.flows[flow_key]
                waiter = flow[0]
                free: list[str] = []
                most = 0
                for endpoint in self._candidates(waiter.model, waiter.subset):
                    address = endpoint.address
                    room = rooms.get(address)
                    if room is None:
                        room = rooms[address] = self._endpoint_room(endpoint, now)
                    if room > 0:
                        free.append(address)
                        if room > most:
                            most, waiter.taken = room, address
                if not free or not self._may_take(
                    waiter.fairness_id, waiter.model, self._candidates(waiter.model, waiter.subset),
                    sum(rooms[a] for a in free), now,
                ):
                    blocked.add(flow_key)
                    continue
                # The slot most likely taken (the freest endpoint) counts as taken until it is routed.
                rooms[waiter.taken] -= 1
                self._taken[waiter.taken] = self._taken.get(waiter.taken, 0) + 1
                waiter.where = frozenset(free)
                self._finish(waiter, "dispatched")
                let_go += 1
                progressed = True
                if flow_key in band.flows:
                    band.flows.move_to_end(flow_key)  # its next request waits for the others' turn
            if not progressed:
                break
        return let_go

    def _expire(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, waiter = heapq.heappop(deadlines)
            if waiter.done:
                continue
            if self._candidates(waiter.model, waiter.subset):
                self._finish(waiter, "expired", full(
                    "queue_timeout",
                    f"Every endpoint serving '{waiter.model}' stayed saturated for "
                    f"{now - waiter.enqueued_at:.0f} s; retry later.",
                ))
            else:
                self._finish(waiter, "expired", RequestError(
                    503, f"No endpoint serving '{waiter.model}' became ready within "
                    f"{now - waiter.enqueued_at:.0f} s; retry later.", "model", "no_endpoint", retry_after=5,
                ))
