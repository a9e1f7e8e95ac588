"""PeerSync: this replica's picks to the other replicas of the pool, and theirs into this one's plugins.

Each pick of a :class:`~epp.scheduling.framework.PeerShared` plugin (the prefix scorers) is queued
(the request's path does nothing more) and sent, encoded (``epp.peers.wire``) with the others of the
next ``flush_delay`` seconds, in one UDP datagram to every peer (more where they do not fit one). A
datagram is opened only when it comes from a peer's address, and used only when its seal checks, it
is not older than :data:`MAX_AGE` and its sequence number has not been seen from its sender: past
the highest, or one of the ``REPLAY_WINDOW - 1`` below it not seen yet (a datagram the network
reordered is still used, a replayed one is not). Each of its picks is handed to the plugin of the same
name, unless it names a pod this replica does not know (not yet discovered, or gone: its state would
outlive it). Nothing waits on a peer, and a failed send is logged, never raised: a lost datagram
costs only placement, never a request. Its own datagrams (its random sender id) it drops.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge

from epp.peers.wire import MAX_PICKS, ROOM, PeerMessageError, encode_pick, open_datagram, seal, seed_tag
from epp.scheduling.framework import PeerShared, SharedPick

log = logging.getLogger(__name__)

FLUSH_DELAY = 0.002
"""Seconds a pick waits for others to share its datagram."""
MAX_AGE = 10.0
"""Seconds (wall clock, either way: the nodes' clocks are synchronised) a datagram stays usable."""
REPLAY_WINDOW = 64
"""The sequence numbers a sender's window holds: its highest and the 63 below it, each of which may
still arrive (reordered), once; 64 or more behind, a datagram is dropped as replayed (it cannot be
told from one)."""
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
_SENDERS = 256  # the senders whose sequence windows are kept
_TOLD_AGAIN = 600.0  # seconds before the same problem from the same source is logged again

Peer = tuple[str, int]


class PeerMetrics:
    """What the replica sent and received, under ``{component}_peer_*``."""

    def __init__(self, registry: CollectorRegistry, component: str = "epp") -> None:
        self.sent = Counter(f"{component}_peer_picks_sent", "Picks sent to the other replicas (each once, "
                            "to every peer).", registry=registry)
        self.received = Counter(
            f"{component}_peer_picks_received", "Peers' picks, by outcome: applied, hashes_differ (the "
            "peer's hash seed differs: its prefix sightings applied, its block hashes not), unknown_endpoint "
            "(a pod this replica does not know) or unknown_plugin.", ["outcome"], registry=registry,
        )
        self.rejected = Counter(
            f"{component}_peer_datagrams_rejected", "Datagrams on the peer port that were not used: "
            "stranger (not from a peer's address), auth (not sealed with the pool's peer key), malformed, "
            "stale (older than 10 s) or replayed (a sequence number already seen, or 64 or more behind "
            "its sender's latest).", ["reason"],
            registry=registry,
        )
        self.send_errors = Counter(f"{component}_peer_send_errors", "Datagrams that could not be sent to "
                                   "a peer.", registry=registry)
        self.peers = Gauge(f"{component}_peers", "Other replicas this one sends its picks to.",
                           registry=registry)


class PeerSync(asyncio.DatagramProtocol):
    """Sends this replica's shared picks to its peers and applies theirs (see the module's docstring)."""

    def __init__(
        self,
        plugins: Mapping[str, PeerShared],
        key: bytes,
        known: Callable[[str], bool],
        metrics: PeerMetrics | None = None,
        *,
        flush_delay: float = FLUSH_DELAY,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._plugins = dict(plugins)
        self._key = key
        self._known = known
        self._metrics = metrics
        self._delay = flush_delay
        self._wall = wall_clock
        self.sender = secrets.randbits(63)
        self.seed_tag = seed_tag(key)
        self._sequence = 0
        self._windows: OrderedDict[int, tuple[int, int]] = OrderedDict()  # sender -> seen_sequence's window
        self._peers: tuple[Peer, ...] = ()
        self._peer_hosts: frozenset[str] = frozenset()
        self._pending: list[SharedPick] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._flush_at: asyncio.TimerHandle | None = None
        self._told: dict[tuple[str, str], float] = {}  # (source, problem) -> when last logged

    @property
    def peers(self) -> tuple[Peer, ...]:
        return self._peers

    def attach(self) -> None:
        """Have the plugins hand their picks to this sync."""
        for plugin in self._plugins.values():
            plugin.share = self.publish

    def detach(self) -> None:
        for plugin in self._plugins.values():
            plugin.share = None

    def set_peers(self, peers: Iterable[Peer]) -> None:
        """Send to these from now on (this replica's own address left out by the caller)."""
        chosen = tuple(sorted(set(peers)))
        if chosen != self._peers:
            log.info("peers", extra={"peers": [f"{host}:{port}" for host, port in chosen]})
        self._peers = chosen
        self._peer_hosts = frozenset(host for host, _ in chosen)
        if self._metrics is not None:
            self._metrics.peers.set(len(chosen))

    def publish(self, pick: SharedPick) -> None:
        """Queue one of this replica's picks for the peers (the post-pick hook's ``share``): on the
        request's path only a list append; :meth:`flush` encodes and sends."""
        if not self._peers or self._transport is None:
            return
        self._pending.append(pick)
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(self._delay, self.flush)

    def flush(self) -> None:
        """Send the queued picks now, as few datagrams as hold them (a send that fails is logged and
        counted, never raised)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        pending, self._pending = self._pending, []
        if not pending or not self._peers or self._transport is None:
            return
        batch: list[bytes] = []
        size = 0
        for record in map(encode_pick, pending):
            if record is None:
                continue
            if size + len(record) > ROOM or len(batch) == MAX_PICKS:
                self._send(batch)
                batch, size = [], 0
            batch.append(record)
            size += len(record)
        if batch:
            self._send(batch)

    def _send(self, records: list[bytes]) -> None:
        assert self._transport is not None
        self._sequence += 1
        datagram = seal(self.sender, self._sequence, int(self._wall() * 1000), self.seed_tag, records,
                        self._key)
        sent = 0
        for peer in self._peers:
            try:
                self._transport.sendto(datagram, peer)
                sent += 1
            except (OSError, ValueError) as error:  # uvloop raises a family mismatch at once
                if self._metrics is not None:
                    self._metrics.send_errors.inc()
                self._tell(peer[0], "send", "cannot send to a peer", error=str(error))
        if sent and self._metrics is not None:
            self._metrics.sent.inc(len(records))

    # asyncio.DatagramProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not registered as an asyncio.DatagramTransport, but is one.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def error_received(self, exc: Exception) -> None:
        # A peer's port closed (it restarted): the next discovery round or its return mends it.
        log.debug("peer send failed", extra={"error": str(exc)})

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        source = str(addr[0])
        if source not in self._peer_hosts:
            self._reject("stranger", source, "a datagram from an address that is not a peer's")
            return
        try:
            batch = open_datagram(data, self._key)
        except PeerMessageError as error:
            self._reject(error.reason, source, "peer datagram rejected", detail=str(error))
            return
        if batch.sender == self.sender:
            return
        if abs(self._wall() * 1000 - batch.sent_at_ms) > MAX_AGE * 1000:
            self._reject("stale", source, "a peer datagram older than 10 s (or a clock that is off)")
            return
        window = seen_sequence(self._windows.get(batch.sender), batch.sequence)
        if window is None:
            self._reject("replayed", source, "a peer datagram seen before, or too far behind its sender's")
            return
        self._windows[batch.sender] = window
        self._windows.move_to_end(batch.sender)
        if len(self._windows) > _SENDERS:
            self._windows.popitem(last=False)
        agree = batch.seed_tag == self.seed_tag
        if not agree:
            self._tell(source, "hashes", "a peer hashes prompts differently: start every replica with the "
                       "same PYTHONHASHSEED; its prefix sightings are used, its block hashes are not")
        outcomes: dict[str, int] = {}
        for pick in batch.picks:
            plugin = self._plugins.get(pick.plugin)
            if plugin is None:
                outcome = "unknown_plugin"
            elif not self._known(pick.address):
                outcome = "unknown_endpoint"
            else:
                plugin.apply_shared(pick, agree)
                outcome = "applied" if agree else "hashes_differ"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if self._metrics is not None:
            for outcome, count in outcomes.items():
                self._metrics.received.labels(outcome).inc(count)

    def _reject(self, reason: str, source: str, message: str, **extra: str) -> None:
        if self._metrics is not None:
            self._metrics.rejected.labels(reason).inc()
        self._tell(source, reason, message, reason=reason, **extra)

    def _tell(self, source: str, problem: str, message: str, **extra: str) -> None:
        """Log a problem once per source every 10 minutes (a stranger sending junk must not flood the
        log, and a problem seen long ago is told again)."""
        now = time.monotonic()
        told = self._told.get((source, problem))
        if told is not None and now - told < _TOLD_AGAIN:
            return
        if len(self._told) >= 256:
            self._told.clear()
        self._told[source, problem] = now
        log.warning(message, extra={"source": source, **extra})

    def close(self) -> None:
        self.flush()
        self.detach()
        if self._transport is not None:
            self._transport.close()


def seen_sequence(window: tuple[int, int] | None, sequence: int) -> tuple[int, int] | None:
    """A sender's window after ``sequence`` arrives, or None where it must be dropped (seen before, or
    :data:`REPLAY_WINDOW` or more behind the sender's highest). A window is (the highest sequence
    number seen, a mask whose bit ``i`` says ``highest - i`` was seen); None: nothing seen yet."""
    if window is None:
        return sequence, 1
    highest, seen = window
    if sequence > highest:
        ahead = sequence - highest
        return sequence, ((seen << ahead) | 1) & _WINDOW_MASK if ahead < REPLAY_WINDOW else 1
    behind = highest - sequence
    if behind >= REPLAY_WINDOW or seen >> behind & 1:
        return None
    return highest, seen | 1 << behind
