"""Replicas that agree: the pool's EPP replicas tell each other their picks.

Each replica sees only its share of the pool's requests. Alone, each learns a different prefix index
and deals its balanced homes from different sightings, so the replicas place a recurring prefix on
different pods, and the pods cache it twice (docs/matrix.md, "Where two replicas lose to one").
With ``--peer-port``, a replica sends every pick of its prefix scorers (model, prefix key, pod, block
hashes) to the others over UDP (``epp.peers.sync``), sealed with the pool's key
(``--peer-key-file``, ``epp.peers.wire``), and learns from theirs as from its own: every replica
then has every sighting and every placement.

Block hashes use Python's ``hash``, which is seeded per process: replicas must run with the same
``PYTHONHASHSEED`` (on GKE a random secret of the stack, in the one box one per run). A replica whose
seed differs is told by the seed tag in each datagram (an HMAC of its hash of a fixed value), logs
it, and uses only the peer's prefix sightings (their keys are BLAKE2b, alike everywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from epp.peers.directory import DNS_INTERVAL, follow, own_addresses
from epp.peers.sync import Peer, PeerMetrics, PeerSync
from epp.scheduling.framework import PeerShared

MIN_KEY_BYTES = 16

__all__ = ["MIN_KEY_BYTES", "PeerRun", "PeerSync", "read_key", "start_peers"]


def read_key(path: Path) -> bytes:
    """The pool's peer key from ``path`` (surrounding whitespace dropped); ValueError when it is too
    short to seal anything (neither the key nor the path is quoted: the caller names the file)."""
    key = path.read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the peer key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


@dataclass(slots=True)
class PeerRun:
    """A running :class:`PeerSync`: its UDP port and the task that keeps its peers current (None when
    it was given none: the caller sets them)."""

    sync: PeerSync
    port: int
    task: asyncio.Task[None] | None

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.sync.close()


async def start_peers(
    plugins: Mapping[str, PeerShared],
    key: bytes,
    known: Callable[[str], bool],
    *,
    bind: str,
    port: int,
    peers: Sequence[Peer],
    registry: CollectorRegistry | None = None,
    interval: float = DNS_INTERVAL,
    on_error: Callable[[], None] | None = None,
) -> PeerRun:
    """Listen on ``bind:port`` (UDP; OSError naming the address when it cannot), send the ``plugins``'
    picks to ``peers`` (names resolved now and every ``interval`` seconds, this replica left out) and
    apply theirs."""
    loop = asyncio.get_running_loop()
    sync = PeerSync(plugins, key, known, PeerMetrics(registry) if registry is not None else None)
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: sync, local_addr=(bind, port))
    except OSError as error:
        raise OSError(f"cannot listen for peers on {bind}:{port} (UDP): {error.strerror or error}") from None
    bound = int(transport.get_extra_info("sockname")[1])
    family = int(transport.get_extra_info("socket").family)  # peers of the other family cannot be sent to
    sync.attach()
    own = await own_addresses(bind, bound)
    task = None
    if peers:
        task = asyncio.ensure_future(follow(peers, own, sync.set_peers, interval, on_error, family))
    return PeerRun(sync, bound, task)
