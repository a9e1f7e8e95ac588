"""The key check itself: which key a request carries, and the three refusals it can answer with."""

from __future__ import annotations

import json

import pytest
from epp.auth.check import AuthError, KeyCheck, presented_key
from epp.auth.keys import parse_api_keys
from epp.auth.store import KeyStore, Tenant
from epp.extproc.errors import RequestError, refusal_response, unknown_model

KEY_A = "sk-team-a-0123456789abcdefghijklmnop"
KEY_B = "sk-team-b-0123456789abcdefghijklmnop"
GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def check(clock: Clock | None = None) -> KeyCheck:
    store = KeyStore(
        parse_api_keys([
            {"name": "team-a", "key": KEY_A, "models": [GEMMA], "requestsPerMinute": 2},
            {"name": "team-b", "key": KEY_B, "models": [PHI, "secret/model-of-b"]},
        ]),
        window=1.0,
    )
    return KeyCheck(store, clock=clock or Clock())


def refusal(
    error: pytest.ExceptionInfo[AuthError] | pytest.ExceptionInfo[RequestError],
) -> tuple[int, dict[str, str], dict[str, object]]:
    response = refusal_response(error.value).immediate_response
    headers = {o.header.key: o.header.raw_value.decode() for o in response.headers.set_headers}
    return response.status.code, headers, json.loads(response.body)["error"]


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"authorization": f"Bearer {KEY_A}"}, KEY_A),
        ({"authorization": f"bearer   {KEY_A} "}, KEY_A),
        ({"x-api-key": KEY_A}, KEY_A),
        ({"authorization": "Basic dXNlcjpwYXNz", "x-api-key": KEY_B}, KEY_B),
        ({"authorization": f"Bearer {KEY_A}", "x-api-key": KEY_B}, KEY_A),
        ({"authorization": "Bearer "}, None),
        ({}, None),
    ],
    ids=["bearer", "bearer-any-case", "x-api-key", "basic-then-x-api-key", "bearer-first", "empty", "none"],
)
def test_the_key_comes_from_a_bearer_token_or_x_api_key(headers: dict[str, str], key: str | None) -> None:
    assert presented_key(headers) == key


def test_no_key_and_a_wrong_key_get_the_same_401_asking_for_a_bearer_token() -> None:
    gate = check()
    with pytest.raises(AuthError) as missing:
        gate.authenticate({})
    with pytest.raises(AuthError) as wrong:
        gate.authenticate({"authorization": f"Bearer {KEY_A}-but-not-quite"})

    assert (missing.value.reason, wrong.value.reason) == ("no_key", "bad_key")
    assert refusal_response(missing.value) == refusal_response(wrong.value)
    status, headers, error = refusal(missing)
    assert status == 401
    assert headers == {"content-type": "application/json", "www-authenticate": "Bearer"}
    assert error["type"] == "authentication_error"
    assert error["code"] == 401
    assert "Authorization: Bearer" in str(error["message"])
    assert KEY_A not in json.dumps(error)


def test_a_good_key_is_its_tenant() -> None:
    tenant = check().authenticate({"x-api-key": KEY_A})
    assert isinstance(tenant, Tenant)
    assert tenant.name == "team-a"


def test_a_model_the_key_may_not_use_is_the_404_of_a_model_that_does_not_exist() -> None:
    gate = check()
    tenant = gate.authenticate({"authorization": f"Bearer {KEY_A}"})
    served = [GEMMA, PHI, "secret/model-of-b"]
    gate.authorize(tenant, GEMMA, served)
    with pytest.raises(RequestError) as caught:
        gate.authorize(tenant, PHI, served)

    absent = unknown_model(PHI, [GEMMA])  # what a model no one serves gets, the key's models listed
    assert refusal_response(caught.value) == refusal_response(absent)
    status, _, error = refusal(caught)
    assert status == 404
    assert (error["type"], error["param"]) == ("not_found_error", "model")
    assert error["message"] == f"The model '{PHI}' does not exist. Models served: {GEMMA}."
    assert "secret/model-of-b" not in str(error["message"])  # never another tenant's models
    assert caught.value.reason == "model_not_allowed"  # metrics still tell the two apart


def test_over_the_limit_is_a_429_with_retry_after_and_the_key_is_let_in_again_later() -> None:
    clock = Clock()
    gate = check(clock)
    tenant = gate.authenticate({"x-api-key": KEY_A})
    gate.admit(tenant)
    gate.admit(tenant)
    with pytest.raises(AuthError) as caught:
        gate.admit(tenant)

    status, headers, error = refusal(caught)
    assert status == 429
    assert headers["retry-after"] == "1"
    assert error["type"] == "rate_limit_exceeded"
    assert "team-a" not in json.dumps(error)
    assert KEY_A not in json.dumps(error)

    clock.now += int(headers["retry-after"])
    gate.admit(tenant)


def test_a_key_without_a_limit_is_never_refused_for_rate() -> None:
    gate = check()
    tenant = gate.authenticate({"x-api-key": KEY_B})
    for _ in range(1000):
        gate.admit(tenant)
