"""The peers' datagram: what one replica seals, another opens, and nothing else gets through."""

import os
import subprocess
import sys

import pytest
from epp.peers.wire import (
    MAX_DATAGRAM,
    ROOM,
    PeerMessageError,
    encode_pick,
    fingerprint,
    open_datagram,
    seal,
    seed_tag,
)
from epp.scheduling.framework import SharedPick

KEY = b"a pool's peer key, 32 bytes long"
GEMMA = "google/gemma-2b-it"


def pick(hashes: tuple[int, ...] = (1, -2, 2**63 - 1, -(2**63)), key: int | None = 2**64 - 1) -> SharedPick:
    return SharedPick("prefix-affinity-scorer", GEMMA, key, "10.0.0.7:8000", hashes)


def sealed(*picks: SharedPick, key: bytes = KEY, sender: int = 42) -> bytes:
    records = [encode_pick(p) for p in picks]
    assert all(r is not None for r in records)
    return seal(sender, 7, 1_700_000_000_123, b"seed-tag", [r for r in records if r is not None], key)


def test_a_batch_of_picks_comes_out_as_it_went_in():
    qwen = SharedPick("p", "Qwen/Qwen2.5-3B-Instruct", 7, "[::1]:1", (3,))
    picks = (pick(), pick(hashes=(), key=None), qwen)
    batch = open_datagram(sealed(*picks), KEY)
    assert (batch.sender, batch.sequence, batch.sent_at_ms, batch.seed_tag) == (
        42, 7, 1_700_000_000_123, b"seed-tag"
    )
    assert [(p.plugin, p.model, p.key, p.address, tuple(p.hashes)) for p in batch.picks] == [
        (p.plugin, p.model, p.key, p.address, tuple(p.hashes)) for p in picks
    ]


def test_a_datagram_sealed_with_another_key_or_changed_on_the_way_is_refused_as_not_a_peers():
    data = sealed(pick())
    with pytest.raises(PeerMessageError) as other_key:
        open_datagram(sealed(pick(), key=b"somebody else's key, also long"), KEY)
    assert other_key.value.reason == "auth"
    tampered = bytearray(data)
    tampered[30] ^= 1
    for bad in (bytes(tampered), data[:-1], data[:20], b""):
        with pytest.raises(PeerMessageError) as error:
            open_datagram(bad, KEY)
        assert error.value.reason == "auth"


def test_a_sealed_datagram_laid_out_wrong_is_refused_as_malformed():
    record = encode_pick(pick())
    assert record is not None
    for body in ([record[:-3]], [record, b"junk"]):
        with pytest.raises(PeerMessageError) as error:
            open_datagram(seal(1, 2, 3, b"tag-tag!", body, KEY), KEY)
        assert error.value.reason == "malformed"


def test_a_pick_with_more_hashes_than_a_datagram_holds_keeps_its_leading_ones():
    many = tuple(range(20_000))
    record = encode_pick(pick(hashes=many))
    assert record is not None
    assert len(record) <= ROOM
    data = seal(1, 2, 3, b"tag-tag!", [record], KEY)
    assert len(data) <= MAX_DATAGRAM
    (back,) = open_datagram(data, KEY).picks
    assert 7_000 < len(back.hashes) < 7_500
    assert tuple(back.hashes) == many[: len(back.hashes)]


def test_a_name_too_long_to_send_is_not_sent():
    assert encode_pick(SharedPick("p", GEMMA, None, "x" * 256, (1,))) is None
    assert encode_pick(SharedPick("p" * 256, GEMMA, None, "10.0.0.1:8000", (1,))) is None
    assert encode_pick(SharedPick("p", "m" * 65_000, None, "10.0.0.1:8000", (1,))) is None  # over a datagram


def _seed_tag(seed: str) -> str:
    code = f"from epp.peers.wire import seed_tag; print(seed_tag({KEY!r}).hex())"
    env = {**os.environ, "PYTHONHASHSEED": seed}
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


def test_two_processes_have_the_same_seed_tag_only_under_the_same_hash_seed():
    assert _seed_tag("1234") == _seed_tag("1234")
    assert _seed_tag("1234") != _seed_tag("1235")


def test_the_seed_tag_says_nothing_of_the_seed_without_the_key():
    # Under another key the same seed gives another tag: the tag is keyed, not the raw fingerprint
    # (which would let anyone who saw a datagram search the 2**32 seeds offline).
    assert seed_tag(KEY) != seed_tag(b"another pool's key, as long as it")
    assert isinstance(fingerprint(), int)
