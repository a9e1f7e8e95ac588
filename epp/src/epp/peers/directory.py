"""Where the other replicas are: a fixed list, or a DNS name that resolves to every replica.

On Kubernetes the name is the EPP's headless Service (``<pool>-epp-peers``): it resolves to the
ready replicas' pod addresses. It is resolved again every ``interval`` seconds, on the event loop's
resolver (never blocking a request); a failed lookup keeps the last answer. The replica's own
address and port (its host name's addresses, and the one it is bound to, on its peer port) are left
out, so replicas on one host with different ports (the one box) still reach each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Sequence

from epp.peers.sync import Peer

log = logging.getLogger(__name__)

DNS_INTERVAL = 10.0


def parse_peer(text: str) -> Peer:
    """``HOST:PORT`` (``[v6]:PORT``) as a pair; ValueError naming what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host.strip("[]")
    try:
        host.encode("idna")  # what the resolver will do with it: empty or over-long labels fail
    except UnicodeError:
        raise ValueError(f"{text!r}: {host!r} is not a host name or address") from None
    return host, int(port)


def parse_peers(text: str) -> list[Peer]:
    """A comma-separated list of ``HOST:PORT``."""
    return [parse_peer(part) for part in text.split(",") if part.strip()]


async def resolve(
    peers: Sequence[Peer], own: frozenset[Peer], family: int = socket.AF_UNSPEC
) -> set[Peer]:
    """Every address of ``peers`` (names resolved) of the ``family`` this replica's socket sends to,
    as ``(ip, port)``, but ``own``."""
    loop = asyncio.get_running_loop()
    found: set[Peer] = set()
    for host, port in peers:
        if not _may_be(host, family):
            continue
        for *_, sockaddr in await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM):
            peer = (str(sockaddr[0]), port)
            if peer not in own:
                found.add(peer)
    return found


def _may_be(host: str, family: int) -> bool:
    """False for an address literal of the other family (a name may have addresses of either)."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return True
    wanted = {socket.AF_INET: 4, socket.AF_INET6: 6}.get(socket.AddressFamily(family))
    return wanted is None or version == wanted


async def own_addresses(bound: str, port: int) -> frozenset[Peer]:
    """Where this replica's peers reach it: its host name's addresses, and ``bound`` unless a wildcard,
    on its peer ``port``."""
    loop = asyncio.get_running_loop()
    own = set() if bound in ("0.0.0.0", "::", "") else {bound}
    with contextlib.suppress(OSError):
        for *_, sockaddr in await loop.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_DGRAM):
            own.add(str(sockaddr[0]))
    return frozenset((ip, port) for ip in own)


async def follow(
    peers: Sequence[Peer],
    own: frozenset[Peer],
    apply: Callable[[Iterable[Peer]], None],
    interval: float = DNS_INTERVAL,
    on_error: Callable[[], None] | None = None,
    family: int = socket.AF_UNSPEC,
) -> None:
    """Resolve ``peers`` (addresses of ``family``) now and every ``interval`` seconds, handing each
    answer to ``apply``; a lookup that fails, however, keeps the last answer and is tried again."""
    failing = False
    while True:
        try:
            apply(await resolve(peers, own, family))
            if failing:
                log.info("peer lookup answers again")
            failing = False
        except Exception as error:  # whatever the resolver raises (a bad name: UnicodeError), go on
            if on_error is not None:
                on_error()
            if not failing:
                log.warning("peer lookup failed; keeping the last peers", extra={"error": str(error)})
            failing = True
        await asyncio.sleep(interval)
