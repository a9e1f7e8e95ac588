"""The EPP's view of its pool: endpoints, the models each one serves, and their latest metrics.

Discovery (Kubernetes or a static list) adds and removes endpoints, the model prober sets their
models and the metrics scraper their metrics, all through the :class:`Datastore`. Each change of
membership or models derives a new immutable :class:`PoolView` (routable endpoints, a per-model
index, the served models and the ``/v1/models`` answer) once; the request path only reads
``Datastore.view``. Everything here runs on the single asyncio event loop, so no locking.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from epp.contract import join_host_port
from epp.model_list import model_list_body

# The send (and seen end) times an InFlight keeps, the latest ones, however old: more than a pod's
# requests in one scrape interval, and more than it runs at once (``unseen_ends`` reads those a scrape
# counted, and the tie-break to the pod sent a request least recently the latest one).
SEND_LOG = 1024
# A request routed this long before a scrape was sent may still not show in it: it is on its way
# through the proxy, or the pod has not queued it yet (vLLM tokenizes the prompt first). Such a
# request counts as routed since the scrape: counted twice at worst, rather than nowhere.
SEND_SHOWS_AFTER = 0.025


@dataclass(slots=True)
class Metrics:
    """The latest scrape of one endpoint's vLLM ``/metrics``."""

    waiting: int = 0
    running: int = 0
    kv_cache_usage: float = 0.0
    running_adapters: frozenset[str] = frozenset()
    waiting_adapters: frozenset[str] = frozenset()
    max_loras: int = 0
    block_size: int = 16
    num_gpu_blocks: int = 0
    # time.monotonic() when the last successful scrape's answer came (its age, and the answers seen to
    # end since it); 0.0 means never scraped.
    updated_at: float = 0.0
    # time.monotonic() when that scrape was sent: its figures count every request the pod had by
    # then, so the requests routed since (or a little before: SEND_SHOWS_AFTER) count on top of them.
    # 0.0: as ``updated_at``.
    sent_at: float = 0.0
    # This EPP's in-flight count to the pod when the scrape was sent; -1: not known.
    own_at: int = -1

    @property
    def unseen_sends_after(self) -> float:
        """The requests routed to the pod after this monotonic time may not be in these figures."""
        return (self.sent_at or self.updated_at) - SEND_SHOWS_AFTER

    def age(self, now: float | None = None) -> float:
        """Seconds since the last successful scrape (infinite when never scraped)."""
        if self.updated_at == 0.0:
            return float("inf")
        return (time.monotonic() if now is None else now) - self.updated_at


class InFlight:
    """**In flight**, the one definition: requests this EPP routed to an address whose answers have
    not begun, plus those whose answer it still reads (to meter its usage, check its model, follow it
    to its end). Acquired when the request is routed; released when its response headers are back
    (the endpoint's own metrics count it as running from then on), or at the end of an answer it
    reads, or when the request fails or is cancelled. Only this EPP's requests: another replica's are
    not counted.

    It also keeps when the latest requests were routed (at most :data:`SEND_LOG`), and when the
    latest answers it saw end did (``epp.requestcontrol.answer_ends``), so that a load read from a
    scrape can add what the scrape cannot have seen yet (:meth:`sent_since`) and take off what ended
    since (:meth:`ended_since`), and guess which of the requests it counted have ended
    (:func:`unseen_ends`).

    The :class:`Datastore` owns one per address and hands the same one to every :class:`Endpoint`
    on that address, so the count survives the endpoint leaving and coming back (a readiness flap, an
    IP reused by a new pod).
    """

    __slots__ = ("count", "ends", "last_early", "sends")

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self.sends: deque[float] = deque(maxlen=SEND_LOG)
        self.ends: deque[float] = deque(maxlen=SEND_LOG)
        # When it last let go of a request whose answer may still run (a stream not followed to its
        # end): the count is exact to its requests' ends while that was long enough ago.
        self.last_early = -math.inf

    def routed(self, now: float) -> None:
        """One more request routed here, at monotonic time ``now``."""
        self.count += 1
        self.sends.append(now)

    def answer_ended(self, now: float) -> None:
        """An answer from here was seen to end at monotonic time ``now``."""
        self.ends.append(now)

    def last_sent(self) -> float:
        """Monotonic time of the latest request routed here; ``-inf`` if none yet."""
        sends = self.sends
        return sends[-1] if sends else -math.inf

    def sent_since(self, t: float) -> int:
        """Requests routed here after monotonic time ``t`` (of the latest :data:`SEND_LOG`)."""
        return _after(self.sends, t)

    def ended_since(self, t: float) -> int:
        """Answers from here seen to end after monotonic time ``t`` (of the latest :data:`SEND_LOG`)."""
        return _after(self.ends, t)


def unseen_ends(endpoints: Sequence[Endpoint], oldest: float) -> list[int]:
    """How many of each endpoint's requests have probably ended since its scrape, unseen by this EPP.

    A stream's end is seen only where its chunks pass the EPP (``epp.requestcontrol.answer_ends``:
    every stream on a full-duplex proxy, else those it reads or follows to their end); the others
    end unseen until the next scrape. Guessed from two facts:

    * **How many.** About as many answers end as requests arrive (a closed loop ends one for each
      it sends; any steady load ends as many as arrive): each request routed since the scrapes (to
      any of these endpoints with a fresh scrape, a queuing one included) stands for one end, less
      the ends this EPP saw since (taken to be of their endpoints' oldest counted requests, and not
      guessed again).
    * **Where.** On the endpoint holding the oldest of the requests its scrape counted, among those
      scraped before that request was routed (a scrape sent after it shows the end already). The
      requests a scrape counted (``running + waiting``) are taken to be the endpoint's latest ones
      routed before the scrape could see them. No endpoint is given more ends than its scrape
      counted, so a pool idle at its scrapes is given none; nor any where its scrape showed a queue:
      a queue is load measured to last (fewer slots, a slower pod), which guessed ends would wash
      out (measured on the heterogeneous row, docs/scheduling.md); nor more than its scrape counted
      beyond this EPP's own requests where it saw their ends (``Endpoint.counts_own_to_the_end``).

    Without it, requests routed since a scrape count on top of it while the ends that made room for
    them do not come off: measured on a closed loop of equal requests (``python -m bench.timeline
    --row bursty``), the picks then left the pods whose answers had just ended and stacked others
    past their slots (docs/scheduling.md, "Ends no one saw"). Endpoints whose scrape is older than
    monotonic time ``oldest``, or missing, get 0 (their load is this EPP's in-flight count).
    """
    ends = [0] * len(endpoints)
    scraped: list[tuple[float, int, deque[float], int, int]] = []  # the pods that may be given ends
    logs: list[deque[float]] = []  # every freshly scraped pod's sends: each one since stands for an end
    first = math.inf
    seen = 0
    for i, e in enumerate(endpoints):
        m = e.metrics
        if m.updated_at == 0.0 or m.updated_at < oldest:
            continue
        load = e.load
        sends = load.sends
        at = m.sent_at or m.updated_at
        first = min(first, at)
        logs.append(sends)
        seen_here = load.ended_since(m.updated_at) if load.ends else 0
        seen += seen_here
        if m.waiting:  # a queue is measured load (fewer slots, a slower pod): no guess washes it out
            continue
        stop = len(sends) - load.sent_since(m.unseen_sends_after)
        # The ends it saw since are taken to be of its oldest counted requests: not guessed again.
        begin = max(0, stop - m.running) + seen_here
        if begin < stop:
            scraped.append((at, i, sends, begin, stop))
    if not scraped:
        return ends
    scraped.sort()  # by scrape time (ties by index: a deque is never compared)
    # Each request routed since the first of the scrapes was sent stands for an end, in their order.
    routed = sorted(t for sends in logs for t in _latest_after(sends, first))
    budget = len(routed) - seen
    heap: list[tuple[float, int, int, int, deque[float]]] = []
    due = 0
    for at in routed:
        if budget <= 0:
            break
        while due < len(scraped) and scraped[due][0] < at:  # scraped before this request was routed
            _, i, sends, begin, stop = scraped[due]
            heapq.heappush(heap, (sends[begin], i, begin, stop, sends))
            due += 1
        if not heap:
            continue
        _, i, begin, stop, sends = heap[0]
        ends[i] += 1
        budget -= 1
        if begin + 1 < stop:
            heapq.heapreplace(heap, (sends[begin + 1], i, begin + 1, stop, sends))
        else:
            heapq.heappop(heap)
    for i, gone in enumerate(ends):
        # Where this EPP saw its own requests' ends, only those it cannot see (the scrape's others)
        # may have ended unseen.
        if gone and endpoints[i].counts_own_to_the_end():
            ends[i] = min(gone, endpoints[i].others())
    return ends


def _latest_after(times: deque[float], t: float) -> Iterator[float]:
    """The ``times`` (ascending) after ``t``, latest first."""
    for at in reversed(times):
        if at <= t:
            return
        yield at


def _after(times: deque[float], t: float) -> int:
    """How many of ``times`` (ascending) are after ``t``: read from the latest, as far as ``t``."""
    count = 0
    for at in reversed(times):
        if at <= t:
            break
        count += 1
    return count


def canonical_ip(ip: str) -> str:
    """An IP address in its one spelling (``fd00:0::1`` -> ``fd00::1``); anything else unchanged."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


@dataclass(slots=True, eq=False)
class Endpoint:
    """One routable target: a pod IP and one of the pool's target ports."""

    name: str
    ip: str
    port: int
    labels: dict[str, str] = field(default_factory=dict)
    # Model ids the endpoint answers to (base models and LoRA adapters), from its own /v1/models.
    models: frozenset[str] = frozenset()
    # LoRA adapter id -> its base model id, from /v1/models `parent`.
    lora_parents: dict[str, str] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    # This EPP's in-flight requests to the address (see InFlight), bound by the datastore.
    load: InFlight = field(default_factory=InFlight)
    # False until the first successful /v1/models answer.
    models_known: bool = False
    # Out of rotation: its connections are refused or its scrapes fail (``epp.discovery.ejection``).
    ejected: bool = False
    # ``10.0.0.1:8000`` or ``[fd00::1]:8000``: what the proxy is told and how the pool keys it.
    address: str = field(init=False)

    def __post_init__(self) -> None:
        self.ip = canonical_ip(self.ip)
        self.address = join_host_port(self.ip, self.port)

    @property
    def in_flight(self) -> int:
        """This EPP's in-flight requests to the endpoint's address (see :class:`InFlight`)."""
        return self.load.count

    def estimated_load(self, oldest: float, less_ended: bool = True, *, waiting_weight: int = 1) -> int:
        """Requests on the endpoint now, as this EPP best knows: ``waiting x waiting_weight +
        running`` from its last scrape, plus the requests routed to it since that scrape was sent
        (which it cannot have counted) or up to ``SEND_SHOWS_AFTER`` before (which it may have
        missed: on their way to the pod), less (with ``less_ended``) the answers from it this EPP
        saw end since its answer came (which it still counted), when the scrape is no older than
        monotonic time ``oldest``; else this EPP's in-flight count (unweighted: it cannot tell which
        of them wait). Never below the in-flight count. On a pod whose scrape showed a queue, each
        request routed since and each answer ended since counts ``waiting_weight`` times: the one
        waits, the other let a waiting request start.

        Between two scrapes the scraped figures stand still while requests come and go: without the
        routed-since term every pick in the interval would see the same loads and herd onto the pod
        that looked least loaded at the scrape; without the ended-since term a pod whose answer just
        ended looks busier than it is until the next scrape, and a client that sends its next
        request as soon as an answer ends is sent elsewhere, onto a busier pod.
        """
        less, without = self.estimated_loads(oldest, waiting_weight=waiting_weight)
        return less if less_ended else without

    def counts_own_to_the_end(self) -> bool:
        """True when this EPP let go of none of its requests to the endpoint before their answers
        ended since a little before its last scrape was sent (``SEND_SHOWS_AFTER``): its in-flight
        count is then exact about its own requests, and the scrape counts the rest (other replicas'
        and clients' requests, and this EPP's streams let go of before). On a full-duplex proxy, or
        with every stream followed to its end, that is always so; with streams let go of at their
        first byte, only for a pod sent no stream lately (only whole answers, say)."""
        m = self.metrics
        return m.own_at >= 0 and self.load.last_early <= m.unseen_sends_after

    def others(self) -> int:
        """What the last scrape counted beyond this EPP's own in-flight requests then (0 when unknown):
        the requests whose ends this EPP cannot see."""
        m = self.metrics
        if m.own_at < 0:
            return 0
        others = m.running + m.waiting - m.own_at
        return others if others > 0 else 0

    def estimated_loads(self, oldest: float, *, waiting_weight: int = 1) -> tuple[int, int]:
        """:meth:`estimated_load` less the answers seen to end, and without them, from one read.

        Where :meth:`counts_own_to_the_end`, the load is this EPP's in-flight count now plus what
        the scrape showed beyond its own count then (other replicas' and other clients' requests):
        no window of doubt about a request routed just before the scrape, no guessed end. A pod that
        was queuing keeps its queue, grown or drained by this EPP's requests since, at
        ``waiting_weight``.
        """
        m, load = self.metrics, self.load
        own = load.count
        if m.updated_at == 0.0 or m.updated_at < oldest:
            return own, own
        if self.counts_own_to_the_end():
            exact = own + self.others()
            unit = 1
            if m.waiting:
                queue = m.waiting + own - m.own_at
                exact += (waiting_weight - 1) * (queue if queue > 0 else 0)
                unit = waiting_weight
            ended = load.ended_since(m.sent_at or m.updated_at) if load.ends else 0
            return exact, exact + ended * unit
        # On a pod that was queuing, a request routed since waits too, and an answer that ended since
        # let a waiting one start: each is worth a waiting request.
        unit = waiting_weight if m.waiting else 1
        unseen = load.sent_since(m.unseen_sends_after)
        seen = m.waiting * waiting_weight + m.running + unseen * unit
        less = seen - load.ended_since(m.updated_at) * unit if load.ends else seen
        return (less if less > own else own), (seen if seen > own else own)

    def serves(self, model: str) -> bool:
        """True when the endpoint serves ``model`` as a base model or as a LoRA adapter."""
        return model in self.models


@dataclass(frozen=True, slots=True)
class PoolView:
    """What the request path reads, derived once per datastore version and never changed after."""

    version: int
    # Endpoints whose models are known and that are not ejected: the candidates a request may be
    # scheduled on.
    endpoints: tuple[Endpoint, ...]
    # Model id -> the routable endpoints serving it.
    by_model: Mapping[str, tuple[Endpoint, ...]]
    # Models a request may name: the pool's configured models and those of every endpoint whose
    # models are known, ejected ones included (their model is unavailable, a 503, not unknown).
    known_models: frozenset[str]
    # Sorted union of the routable endpoints' models and the pool's configured ones (what GET
    # /v1/models lists: a model scaled to zero stays listed).
    served_models: tuple[str, ...]
    # The OpenAI-style GET /v1/models body listing ``served_models``.
    models_body: bytes


def derive_view(version: int, endpoints: Iterable[Endpoint], pool_models: frozenset[str]) -> PoolView:
    probed = [e for e in endpoints if e.models_known]
    routable = tuple(e for e in probed if not e.ejected)
    ejected_models = frozenset(model for e in probed if e.ejected for model in e.models)
    by_model: dict[str, list[Endpoint]] = {}
    for endpoint in routable:
        for model in endpoint.models:
            by_model.setdefault(model, []).append(endpoint)
    served = tuple(sorted(by_model))
    listed = tuple(sorted(pool_models.union(served)))
    return PoolView(
        version=version,
        endpoints=routable,
        by_model={model: tuple(serving) for model, serving in by_model.items()},
        known_models=pool_models.union(served, ejected_models),
        served_models=listed,
        models_body=model_list_body(listed),
    )


@dataclass(frozen=True, slots=True)
class EndpointUpserted:
    """Membership: ``endpoint`` joined the pool (``added``) or its name or labels changed."""

    endpoint: Endpoint
    added: bool


@dataclass(frozen=True, slots=True)
class EndpointRemoved:
    """Membership: ``endpoint`` left the pool."""

    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class ModelsChanged:
    """``endpoint``'s models were learnt for the first time or changed."""

    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class RotationChanged:
    """``endpoint`` was taken out of rotation or put back (``endpoint.ejected``)."""

    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class Synced:
    """Discovery's first full listing of the pool is in."""


DatastoreEvent = EndpointUpserted | EndpointRemoved | ModelsChanged | RotationChanged | Synced
Listener = Callable[[DatastoreEvent], None]


class Datastore:
    """Endpoints of one pool, keyed by address (``join_host_port(ip, port)``), and the one owner of
    the pool's shared state: membership, models, rotation, metrics and in-flight counts.

    ``pool_models``: the models the pool is configured to serve; a request naming one of them while
    no ready pod serves it gets 503 (scaled to zero), not the 404 of a model nobody serves.

    **Events, in a stated order.** Every change is applied first (the endpoint table, the in-flight
    binding, a new :class:`PoolView`), then one typed event is given to every listener in the order
    they subscribed, before the next change can happen (everything runs on one event loop). A listener
    therefore always sees the datastore as the event describes it. Metrics change no view and emit
    nothing: schedulers read them from the endpoints at once.
    """

    def __init__(self, pool_models: Iterable[str] = ()) -> None:
        self._endpoints: dict[str, Endpoint] = {}
        self._listeners: list[Listener] = []
        self._pool_models = frozenset(pool_models)
        # In-flight counts by address (see InFlight); a count outlives its endpoint while requests to
        # its address are still running.
        self._in_flight: dict[str, InFlight] = {}
        # Bumped on any change of membership, models or rotation, each time with a new view.
        self.version = 0
        self.view = derive_view(0, (), self._pool_models)
        self._synced = False

    def subscribe(self, listener: Listener) -> None:
        """Give ``listener`` every later event (see the class docstring for the order)."""
        self._listeners.append(listener)

    def _emit(self, event: DatastoreEvent) -> None:
        for listener in self._listeners:
            listener(event)

    def _changed(self) -> None:
        self.version += 1
        self.view = derive_view(self.version, self._endpoints.values(), self._pool_models)

    @property
    def synced(self) -> bool:
        """True once discovery's first full listing is in (it stays True)."""
        return self._synced

    @synced.setter
    def synced(self, value: bool) -> None:
        if value and not self._synced:
            self._synced = True
            self._emit(Synced())

    def mark_synced(self) -> None:
        """Discovery's first full listing is in: emits :class:`Synced` once."""
        self.synced = True

    @property
    def ready(self) -> bool:
        """The pool can be routed: synced, and an endpoint is routable unless the pool is empty."""
        return self._synced and (not self._endpoints or bool(self.view.endpoints))

    def upsert(self, endpoint: Endpoint) -> Endpoint:
        """Add an endpoint, or update name/labels of a known one (keeping its models and metrics)."""
        current = self._endpoints.get(endpoint.address)
        added = current is None
        if current is None:
            self._endpoints[endpoint.address] = endpoint
            current = endpoint
            count = self._in_flight.get(endpoint.address)
            if count is None:
                self._in_flight[endpoint.address] = endpoint.load
            else:
                endpoint.load = count
        else:
            current.name = endpoint.name
            current.labels = endpoint.labels
        self._changed()
        self._emit(EndpointUpserted(current, added))
        return current

    def remove(self, address: str) -> Endpoint | None:
        endpoint = self._endpoints.pop(address, None)
        if endpoint is not None:
            count = self._in_flight.get(address)
            if count is not None and count.count <= 0:
                del self._in_flight[address]
            self._changed()
            self._emit(EndpointRemoved(endpoint))
        return endpoint

    def acquire(self, address: str, now: float | None = None) -> InFlight:
        """One more request in flight to ``address``, routed at monotonic time ``now``; give the
        count back to :meth:`release`."""
        count = self._in_flight.get(address)
        if count is None:
            count = self._in_flight[address] = InFlight()
        count.routed(time.monotonic() if now is None else now)
        return count

    def release(self, address: str, count: InFlight, *, early: bool = False) -> None:
        """A request acquired on ``address`` is no longer in flight; ``early``: let go of while its
        answer may still run (``InFlight.last_early``)."""
        count.count -= 1
        if early:
            count.last_early = time.monotonic()
        if count.count <= 0 and address not in self._endpoints and self._in_flight.get(address) is count:
            del self._in_flight[address]

    def answer_ended(self, address: str) -> None:
        """An answer from ``address`` was seen to end, now: loads estimated from an older
        scrape no longer count it (:meth:`Endpoint.estimated_load`)."""
        count = self._in_flight.get(address)
        if count is not None:
            count.answer_ended(time.monotonic())

    def in_flight_addresses(self) -> int:
        """How many addresses have a count kept (members, and former ones with requests running)."""
        return len(self._in_flight)

    def set_models(self, address: str, models: frozenset[str], lora_parents: dict[str, str]) -> None:
        endpoint = self._endpoints.get(address)
        if endpoint is None:
            return
        if endpoint.models != models or endpoint.lora_parents != lora_parents or not endpoint.models_known:
            endpoint.models = models
            endpoint.lora_parents = lora_parents
            endpoint.models_known = True
            self._changed()
            self._emit(ModelsChanged(endpoint))

    def set_metrics(self, endpoint: Endpoint, metrics: Metrics) -> bool:
        """Store a fresh scrape of ``endpoint``; False (and nothing stored) when it left the pool or
        was replaced while the scrape was under way. Metrics change no view: the view holds the
        endpoints themselves, so schedulers read the new metrics at once."""
        if self._endpoints.get(endpoint.address) is not endpoint:
            return False
        endpoint.metrics = metrics
        return True

    def set_ejected(self, endpoint: Endpoint, ejected: bool) -> bool:
        """Take ``endpoint`` out of rotation (or put it back); a new view when that changed anything.
        False when it left the pool or was replaced meanwhile."""
        if self._endpoints.get(endpoint.address) is not endpoint:
            return False
        if endpoint.ejected != ejected:
            endpoint.ejected = ejected
            self._changed()
            self._emit(RotationChanged(endpoint))
        return True

    def get(self, address: str) -> Endpoint | None:
        return self._endpoints.get(address)

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._endpoints.values())

    def __len__(self) -> int:
        return len(self._endpoints)

    def routable(self) -> list[Endpoint]:
        """Endpoints whose models are known and not ejected: the candidates a request may be scheduled on."""
        return list(self.view.endpoints)

    def served_models(self) -> list[str]:
        """Sorted union of the models of all routable endpoints (what GET /v1/models lists)."""
        return list(self.view.served_models)
