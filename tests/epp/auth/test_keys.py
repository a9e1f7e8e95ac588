"""The API key list: every bad entry is named, and no error ever quotes a key."""

from __future__ import annotations

import hashlib
import json

import pytest
from epp.auth.keys import ApiKeyError, hash_key, parse_api_keys

KEY_A = "sk-team-a-0123456789abcdefghijklmnop"
KEY_B = "sk-team-b-0123456789abcdefghijklmnop"
SERVED = ("google/gemma-2b-it", "microsoft/Phi-3-mini-4k-instruct")


def errors_of(raw: object, served: tuple[str, ...] | None = SERVED) -> tuple[str, ...]:
    with pytest.raises(ApiKeyError) as caught:
        parse_api_keys(raw, served)
    return caught.value.errors


def test_a_yaml_list_with_a_key_and_a_digest_is_read() -> None:
    text = f"""
- name: team-a
  key: {KEY_A}
  models: [google/gemma-2b-it]
  requestsPerMinute: 120
- name: team-b
  sha256: {hashlib.sha256(KEY_B.encode()).hexdigest()}
"""
    a, b = parse_api_keys(text, SERVED)
    assert (a.name, a.models, a.requests_per_minute) == ("team-a", ("google/gemma-2b-it",), 120)
    assert a.digest == hash_key(KEY_A)
    assert b.digest == hash_key(KEY_B)
    assert b.models is None
    assert b.allows("microsoft/Phi-3-mini-4k-instruct")
    assert not a.allows("microsoft/Phi-3-mini-4k-instruct")


def test_json_reads_the_same_as_yaml() -> None:
    entries = [{"name": "team-a", "key": KEY_A, "requestsPerMinute": 5}]
    assert parse_api_keys(json.dumps(entries)) == parse_api_keys(entries)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([{"key": KEY_A}], "apiKeys[0].name: Field required"),
        ([{"name": "a"}], "apiKeys[0]: needs exactly one of 'key' or 'sha256'"),
        ([{"name": "a", "key": "sk-short"}], "apiKeys[0].key: is shorter than 32 characters"),
        ([{"name": "a", "key": KEY_A, "colour": "red"}], "apiKeys[0].colour: Extra inputs are not permitted"),
        ([{"name": "a b", "key": KEY_A}], "apiKeys[0].name: must be 1-63 letters"),
        ([{"name": "a", "sha256": "XYZ"}], "apiKeys[0].sha256: must be 64 lower-case hexadecimal"),
        ([{"name": "a", "key": KEY_A, "requestsPerMinute": 0}], "apiKeys[0].requestsPerMinute:"),
        ([{"name": "a", "key": KEY_A}, {"name": "a", "key": KEY_B}],
         "apiKeys[1].name: 'a' is already used by apiKeys[0]"),
        ([{"name": "a", "key": KEY_A}, {"name": "b", "sha256": hashlib.sha256(KEY_A.encode()).hexdigest()}],
         "apiKeys[1]: the same key as apiKeys[0]"),
        ([{"name": "a", "key": KEY_A, "models": ["google/gemma-2b-it", "nope"]}],
         "apiKeys[0].models[1]: 'nope' is not served"),
        ([], "apiKeys: must be a non-empty list"),
    ],
)
def test_every_bad_entry_is_named(entries: object, expected: str) -> None:
    assert any(line.startswith(expected) for line in errors_of(entries)), errors_of(entries)


def test_every_defect_is_reported_at_once() -> None:
    found = errors_of([{"name": "a"}, {"key": KEY_B}, {"name": "c", "key": KEY_A, "models": ["nope"]}])
    assert [line.split(":")[0] for line in found] == ["apiKeys[0]", "apiKeys[1].name", "apiKeys[2].models[0]"]


def test_no_error_quotes_a_key() -> None:
    secret = "sk-this-is-a-secret-but-too-short"[:20]
    broken = f"- name: a\n  key: {secret}\n  models: [nope\n"
    numeric = [{"name": "a", "key": 12345678901234567890123456789012345}]
    for raw in (broken, [{"name": "a", "key": secret}], numeric):
        with pytest.raises(ApiKeyError) as caught:
            parse_api_keys(raw, SERVED)
        assert secret not in str(caught.value)
        assert "12345678901234567890" not in str(caught.value)


def test_without_a_served_list_any_model_name_is_accepted() -> None:
    (entry,) = parse_api_keys([{"name": "a", "key": KEY_A, "models": ["anything"]}], None)
    assert entry.models == ("anything",)
