"""The key store holds digests, not keys, and keeps a key's rate limit across reloads."""

from __future__ import annotations

from epp.auth.keys import hash_key, parse_api_keys
from epp.auth.store import KeyStore

KEY_A = "sk-team-a-0123456789abcdefghijklmnop"
KEY_B = "sk-team-b-0123456789abcdefghijklmnop"


def store_of(text: str, **options: object) -> KeyStore:
    return KeyStore(parse_api_keys(text), **options)  # type: ignore[arg-type]


def test_a_key_is_found_by_its_digest_and_only_the_digest_is_kept() -> None:
    store = store_of(f"- {{name: team-a, key: {KEY_A}, models: [m1]}}\n- {{name: team-b, key: {KEY_B}}}")
    tenant = store.find(hash_key(KEY_A))
    assert tenant is not None
    assert (tenant.name, tenant.models) == ("team-a", frozenset({"m1"}))
    assert store.find(hash_key(KEY_B)).name == "team-b"  # type: ignore[union-attr]
    assert store.find(hash_key(KEY_A + "x")) is None
    # Nothing the store holds, nor what a log line would show of it, is the key.
    held = [tenant.name, tenant.digest, tenant.models, repr(tenant), repr(store.__dict__)]
    assert all(KEY_A not in str(value) for value in held)
    assert tenant.digest.hex() not in repr(tenant)
    assert store.names == ["team-a", "team-b"]


def test_a_sha256_entry_matches_the_key_it_is_the_digest_of() -> None:
    store = store_of(f"- {{name: team-a, sha256: {hash_key(KEY_A).hex()}}}")
    assert store.find(hash_key(KEY_A)) is not None


def test_each_replica_gets_its_share_of_a_keys_limit() -> None:
    store = store_of(f"- {{name: team-a, key: {KEY_A}, requestsPerMinute: 121}}", share=2, window=30.0)
    limit = store.find(hash_key(KEY_A)).limit  # type: ignore[union-attr]
    assert limit is not None
    assert (limit.limit, limit.window) == (61, 30.0)


def test_a_reload_keeps_a_keys_spent_limit_unless_its_limit_changed() -> None:
    a = {"name": "team-a", "key": KEY_A, "requestsPerMinute": 1}
    b = {"name": "team-b", "key": KEY_B}
    store = KeyStore(parse_api_keys([a, b]))
    limit = store.find(hash_key(KEY_A)).limit  # type: ignore[union-attr]
    assert limit is not None
    assert limit.take(0.0) == 0.0
    version = store.version

    store.replace(parse_api_keys([a, {**b, "models": ["m2"]}]))  # team-b changed, team-a did not
    kept = store.find(hash_key(KEY_A)).limit  # type: ignore[union-attr]
    assert store.version == version + 1
    assert kept is limit
    assert kept.take(1.0) > 0  # still spent: a reload is no fresh burst

    store.replace(parse_api_keys([{**a, "requestsPerMinute": 5}, b]))
    fresh = store.find(hash_key(KEY_A)).limit  # type: ignore[union-attr]
    assert fresh is not limit
    assert fresh is not None
    assert fresh.limit == 5


def test_a_revoked_key_is_gone_after_a_replace() -> None:
    store = store_of(f"- {{name: team-a, key: {KEY_A}}}\n- {{name: team-b, key: {KEY_B}}}")
    store.replace(parse_api_keys(f"- {{name: team-b, key: {KEY_B}}}"))
    assert store.find(hash_key(KEY_A)) is None
    assert len(store) == 1
