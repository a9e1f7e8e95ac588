"""The datagram the pool's EPP replicas send each other: a batch of picks, sealed with the pool's key.

Layout (little-endian): a header (``b"EPPs"``, the version, the sender's random id, its datagram
sequence number, the wall-clock time it was sealed in milliseconds, its hash-seed tag, the number of
picks), the picks, and an HMAC-SHA256 of all of that under the key the replicas share. Each pick: the
lengths of the plugin name, the model and the address, whether it has a home key, the key, the
number of block hashes; then those three strings (UTF-8) and the hashes (8 bytes each, signed:
Python's ``hash``). A datagram is at most :data:`MAX_DATAGRAM` bytes; a pick with more hashes than
fit keeps its leading ones (a chain's leading blocks are a valid chain).

The sequence number and the time let a receiver refuse a datagram it has seen, or an old one
(``epp.peers.sync``): a captured datagram cannot be replayed. The hash-seed tag is an HMAC, under the
key, of this process's ``hash`` of a fixed value: replicas started with the same ``PYTHONHASHSEED``
have the same tag, and only then do their block hashes mean the same prefixes; without the key the
tag says nothing of the seed.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from epp.scheduling.framework import SharedPick

MAGIC = b"EPPs"
VERSION = 1
MAX_DATAGRAM = 60_000  # under UDP's 65,507 over IPv4
DIGEST_SIZE = 32
TAG_SIZE = 8
_HEADER = struct.Struct(f"<4sBQQQ{TAG_SIZE}sH")  # magic, version, sender, sequence, sent at (ms), tag, picks
_PICK = struct.Struct("<BHBBQH")  # plugin, model and address lengths, has key, key, hashes
ROOM = MAX_DATAGRAM - _HEADER.size - DIGEST_SIZE
"""Bytes of picks one datagram holds."""
MAX_PICKS = 0xFFFF
"""Picks one datagram holds at most (its count is 16 bits)."""


class PeerMessageError(ValueError):
    """A datagram that is not a peer's batch: ``reason`` is ``auth`` (not sealed with this pool's key)
    or ``malformed`` (sealed, but not laid out as this version writes)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Batch:
    """A peer's datagram, opened."""

    sender: int
    sequence: int
    sent_at_ms: int
    seed_tag: bytes
    picks: list[SharedPick]


def fingerprint() -> int:
    """This process's hash of a fixed value: equal in two processes only under the same hash seed."""
    return hash(("epp-peers", "block-hashes", VERSION))


def seed_tag(key: bytes) -> bytes:
    """What a datagram says of the sender's hash seed: the :func:`fingerprint` under the pool's key."""
    return hmac.digest(key, b"hash-seed:%d" % fingerprint(), "sha256")[:TAG_SIZE]


def encode_pick(pick: SharedPick) -> bytes | None:
    """One pick's bytes (its hashes cut to what a datagram holds), or None when a name is too long to
    send (a plugin name or address over 255 bytes, a model over 65,535)."""
    plugin, model, address = pick.plugin.encode(), pick.model.encode(), pick.address.encode()
    if len(plugin) > 0xFF or len(model) > 0xFFFF or len(address) > 0xFF:
        return None
    fixed = _PICK.size + len(plugin) + len(model) + len(address)
    if fixed > ROOM:
        return None
    hashes = pick.hashes
    room = (ROOM - fixed) // 8
    if len(hashes) > room:
        hashes = hashes[:room]
    key = pick.key
    head = _PICK.pack(len(plugin), len(model), len(address), key is not None, key or 0, len(hashes))
    return b"".join((head, plugin, model, address, struct.pack(f"<{len(hashes)}q", *hashes)))


def seal(
    sender: int, sequence: int, sent_at_ms: int, tag: bytes, picks: Sequence[bytes], key: bytes
) -> bytes:
    """A datagram of encoded ``picks`` (together at most :data:`ROOM` bytes, at most 65,535 picks)."""
    if len(picks) > MAX_PICKS:
        raise ValueError(f"at most {MAX_PICKS} picks per datagram, got {len(picks)}")
    head = _HEADER.pack(MAGIC, VERSION, sender, sequence, sent_at_ms, tag, len(picks))
    body = b"".join((head, *picks))
    return body + hmac.digest(key, body, "sha256")


def open_datagram(data: bytes, key: bytes) -> Batch:
    """The batch in ``data``; :class:`PeerMessageError` when it is not one sealed with ``key``. The
    size and the magic are checked before the seal, which costs a pass over the datagram."""
    if len(data) < _HEADER.size + DIGEST_SIZE or data[:4] != MAGIC:
        raise PeerMessageError("auth", f"{len(data)} bytes that are not a peer datagram")
    body, tag = data[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
    if not hmac.compare_digest(hmac.digest(key, body, "sha256"), tag):
        raise PeerMessageError("auth", "not sealed with this pool's peer key")
    _, version, sender, sequence, sent_at_ms, seed, count = _HEADER.unpack_from(body)
    if version != VERSION:
        raise PeerMessageError("malformed", f"version {version}, expected {VERSION}")
    picks: list[SharedPick] = []
    offset = _HEADER.size
    try:
        for _ in range(count):
            plugin_len, model_len, address_len, has_key, home, n = _PICK.unpack_from(body, offset)
            offset += _PICK.size
            end = offset + plugin_len + model_len + address_len
            if end + 8 * n > len(body):
                raise PeerMessageError("malformed", f"pick {len(picks)} runs past the datagram's end")
            plugin = body[offset : offset + plugin_len].decode()
            model = body[offset + plugin_len : offset + plugin_len + model_len].decode()
            address = body[offset + plugin_len + model_len : end].decode()
            hashes = struct.unpack_from(f"<{n}q", body, end)
            offset = end + 8 * n
            picks.append(SharedPick(plugin, model, home if has_key else None, address, hashes))
    except (struct.error, UnicodeDecodeError) as error:
        raise PeerMessageError("malformed", f"pick {len(picks)}: {error}") from None
    if offset != len(body):
        raise PeerMessageError("malformed", f"{len(body) - offset} bytes after the last of {count} picks")
    return Batch(sender, sequence, sent_at_ms, seed, picks)
