"""The flow-control queue: requests wait in the EPP, fairly, until a pod that can serve them has room.

A request waits when its model's queue is not empty (it takes its turn) or when every endpoint that
could serve it is saturated, or none serves it yet (a model waking from zero pods). The dispatcher
then lets requests go as endpoints have room:

- **by priority**: higher bands first; a lower band goes only where a higher one cannot (another
  model's endpoints have room, or the higher band's model has none);
- **fairly within a band**: round robin across fairness ids (tenants: the API key's name, else the
  fairness header) — per tenant and model, so a tenant's requests for a model without room do not
  hold up its requests for another — first come first served within one; one tenant's thousand
  queued requests do not delay another tenant's next one by more than a turn;
- **as much as there is room**: an endpoint has room while its metrics are fresh, its KV cache under
  the detector's threshold and its waiting queue, plus the requests sent to it since its last scrape
  (which the scrape cannot count yet), at most the detector's queue depth.

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
# Sends remembered per endpoint to count those its metrics cannot show yet.
_MAX_SENDS = 256


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
        # When requests were last sent to each address (to count those its metrics cannot show yet).
        self._sends: dict[str, deque[float]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- what the director asks ------------------------------------------------------------------
    def must_wait(self, model: str, subset: frozenset[str] | None) -> bool:
        """Whether a request for ``model`` waits: others for it wait already, or it has no room."""
        return bool(self._by_model.get(model)) or self._room(model, subset) <= 0

    async def admit(self, model: str, subset: frozenset[str] | None, fairness_id: str, priority: int,
                    size: int) -> None:
        """Return when the request may be scheduled; raise the 429/503 ``RequestError`` otherwise."""
        if self.must_wait(model, subset):
            await self.wait(model, subset, fairness_id, priority, size)

    async def wait(self, model: str, subset: frozenset[str] | None, fairness_id: str, priority: int,
                   size: int) -> None:
        """Queue the request and return when it is let go (``must_wait`` said it waits)."""
        waiter = self._enqueue(model, subset, fairness_id, priority, size)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if not waiter.done:
                self._leave(waiter, "cancelled")
            raise

    def sent(self, address: str) -> None:
        """A request was routed to ``address`` (its metrics will show it from their next scrape)."""
        sends = self._sends.get(address)
        if sends is None:
            sends = self._sends[address] = deque(maxlen=_MAX_SENDS)
        sends.append(self._clock())

    def forget(self, address: str) -> None:
        self._sends.pop(address, None)

    # -- capacity -----------------------------------------------------------------------------------
    def _candidates(self, model: str, subset: frozenset[str] | None) -> Sequence[Endpoint]:
        serving = self._datastore.view.by_model.get(model, ())
        if subset is not None:
            serving = tuple(e for e in serving if e.address in subset)
        return serving

    def _unseen(self, endpoint: Endpoint) -> int:
        """Requests sent to ``endpoint`` after its last scrape."""
        sends = self._sends.get(endpoint.address)
        if not sends:
            return 0
        scraped = endpoint.metrics.updated_at
        while sends and sends[0] <= scraped:
            sends.popleft()
        return len(sends)

    def _room(self, model: str, subset: frozenset[str] | None, now: float | None = None) -> int:
        """How many more requests for ``model`` its endpoints can take now (0: saturated or none)."""
        now = self._clock() if now is None else now
        detector = self._detector
        room = 0
        for endpoint in self._candidates(model, subset):
            if not detector.has_capacity(endpoint, now):
                continue
            waiting = endpoint.metrics.waiting + self._unseen(endpoint)
            room += max(0, detector.queue_depth_threshold + 1 - waiting)
        return room

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
            flow = band.flows[(fairness_id, model)] = deque()
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
        rooms: dict[tuple[str, frozenset[str] | None], int] = {}
        for priority in self._order:
            band = self._bands[priority]
            let_go += self._dispatch_band(band, rooms, now)
        if self._metrics is not None:
            self._metrics.saturation(bool(self.count))
        return let_go

    def _dispatch_band(self, band: _Band, rooms: dict[tuple[str, frozenset[str] | None], int],
                       now: float) -> int:
        """Round robin across the band's flows: each turn, a flow's first request goes if its model
        has room; a flow whose first request cannot go waits for a later pass."""
        let_go = 0
        blocked: set[tuple[str, str]] = set()
        while len(blocked) < len(band.flows):
            progressed = False
            for flow_key in list(band.flows):
                if flow_key in blocked:
                    continue
                flow = band.flows[flow_key]
                waiter = flow[0]
                key = (waiter.model, waiter.subset)
                room = rooms.get(key)
                if room is None:
                    room = rooms[key] = self._room(waiter.model, waiter.subset, now)
                if room <= 0:
                    blocked.add(flow_key)
                    continue
                rooms[key] = room - 1
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
