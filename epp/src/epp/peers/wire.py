"""The datagram the pool's EPP replicas send each other: a batch of picks, sealed with the pool's key.

Layout (little-endian): a header (``b"EPPs"``, the version, the sender's random id, its hash
fingerprint, the number of picks), the picks, and an HMAC-SHA256 of all of that under the key the
replicas share. Each pick: the lengths of the plugin name, the model and the address, whether it has
a home key, the key, the number of block hashes; then those three strings (UTF-8) and the hashes (8
bytes each, signed: Python's ``hash``). A datagram is at most :data:`MAX_DATAGRAM` bytes; a pick with
more hashes than fit keeps its leading ones (a chain's leading blocks are a valid chain).

The fingerprint is this process's ``hash`` of a fixed value: replicas started with the same
``PYTHONHASHSEED`` have the same one, and only then do their block hashes mean the same prefixes.
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
_HEADER = struct.Struct("<4sBQqH")  # magic, version, sender, fingerprint, picks
_PICK = struct.Struct("<BHBBQH")  # plugin, model and address lengths, has key, key, hashes
ROOM = MAX_DATAGRAM - _HEADER.size - DIGEST_SIZE
"""Bytes of picks one datagram holds."""
_MAX_PICKS = 0xFFFF


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
    fingerprint: int
    picks: list[SharedPick]


def fingerprint() -> int:
    """This process's hash of a fixed value: equal in two processes only under the same hash seed."""
    return hash(("epp-peers", "block-hashes", VERSION))


def encode_pick(pick: SharedPick) -> bytes | None:
    """One pick's bytes (its hashes cut to what a datagram holds), or None when a name is too long to
    send (a plugin name or address over 255 bytes, a model over 65,535)."""
    plugin, model, address = pick.plugin.encode(), pick.model.encode(), pick.address.encode()
    if len(plugin) > 0xFF or len(model) > 0xFFFF or len(address) > 0xFF:
        return None
    fixed = _PICK.size + len(plugin) + len(model) + len(address)
    hashes = pick.hashes
    room = (ROOM - fixed) // 8
    if len(hashes) > room:
        hashes = hashes[:room]
    key = pick.key
    head = _PICK.pack(len(plugin), len(model), len(address), key is not None, key or 0, len(hashes))
    return b"".join((head, plugin, model, address, struct.pack(f"<{len(hashes)}q", *hashes)))


def seal(sender: int, print_: int, picks: Sequence[bytes], key: bytes) -> bytes:
    """A datagram of encoded ``picks`` (together at most :data:`ROOM` bytes, at most 65,535 picks)."""
    if len(picks) > _MAX_PICKS:
        raise ValueError(f"at most {_MAX_PICKS} picks per datagram, got {len(picks)}")
    body = b"".join((_HEADER.pack(MAGIC, VERSION, sender, print_, len(picks)), *picks))
    return body + hmac.digest(key, body, "sha256")


def open_datagram(data: bytes, key: bytes) -> Batch:
    """The batch in ``data``; :class:`PeerMessageError` when it is not one sealed with ``key``."""
    if len(data) < _HEADER.size + DIGEST_SIZE:
        raise PeerMessageError("auth", f"{len(data)} bytes is shorter than any sealed datagram")
    body, tag = data[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
    if not hmac.compare_digest(hmac.digest(key, body, "sha256"), tag):
        raise PeerMessageError("auth", "not sealed with this pool's peer key")
    magic, version, sender, print_, count = _HEADER.unpack_from(body)
    if magic != MAGIC or version != VERSION:
        expected = f"expected {MAGIC!r} {VERSION}"
        raise PeerMessageError("malformed", f"magic {magic!r} version {version}, {expected}")
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
    return Batch(sender, print_, picks)
