"""The BBR as a closed front door (API keys), over a real gRPC channel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
    ProtocolConfiguration,
)
from epp.auth.check import KeyCheck
from epp.auth.keys import ApiKeyError, parse_api_keys
from epp.auth.store import KeyStore
from epp.extproc.bbr import BodyBasedRouter
from epp.telemetry import Telemetry

from tests.epp.extproc_support import EnvoyStream, Outcome, header_map, serving

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"
ADAPTER = "gemma-sql-lora"
KEY_A = "sk-team-a-0123456789abcdefghijklmnop"
KEY_B = "sk-team-b-0123456789abcdefghijklmnop"
KEYS = [
    {"name": "team-a", "key": KEY_A, "models": [GEMMA, ADAPTER], "requestsPerMinute": 2},
    {"name": "team-b", "key": KEY_B},
]


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def closed_front_door(
    telemetry: Telemetry | None = None, clock: Clock | None = None, *, served: bool = True
) -> BodyBasedRouter:
    store = KeyStore(parse_api_keys(KEYS), window=1.0)
    return BodyBasedRouter(
        telemetry or Telemetry("bbr"),
        served_models=[GEMMA, PHI] if served else None,
        adapters={ADAPTER: GEMMA},
        keys=KeyCheck(store, clock=clock or Clock()),
    )


def completion(model: str) -> bytes:
    return json.dumps({"model": model, "prompt": "hi", "max_tokens": 2}).encode()


def removed_headers(outcome: Outcome) -> list[str]:
    return list(outcome.responses[0].request_headers.response.header_mutation.remove_headers)


def listed(outcome: Outcome) -> list[str]:
    response = outcome.immediate.immediate_response  # type: ignore[union-attr]
    assert response.status.code == 200
    return [m["id"] for m in json.loads(response.body)["data"]]


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - polling state owned by the server's tasks
            await asyncio.sleep(0.005)


async def test_a_request_without_a_key_is_refused_on_its_headers_before_any_body_is_read() -> None:
    async with serving(closed_front_door()) as stub:
        call = stub.Process()
        headers = {":method": "POST", ":path": "/v1/completions", "content-length": "100000"}
        await call.write(ProcessingRequest(
            request_headers=HttpHeaders(headers=header_map(headers), end_of_stream=False),
            protocol_config=ProtocolConfiguration(
                request_body_mode=ProcessingMode.FULL_DUPLEX_STREAMED,
                response_body_mode=ProcessingMode.NONE,
            ),
        ))
        answer: ProcessingResponse = await call.read()
        call.cancel()

    response = answer.immediate_response
    assert response.status.code == 401
    headers_out = {o.header.key: o.header.raw_value.decode() for o in response.headers.set_headers}
    assert headers_out["www-authenticate"] == "Bearer"
    assert json.loads(response.body)["error"]["type"] == "authentication_error"


async def test_a_wrong_key_gets_the_very_same_401_as_no_key() -> None:
    async with serving(closed_front_door()) as stub:
        missing = await EnvoyStream(stub).send_request(None, method="GET", path="/v1/models")
        wrong = await EnvoyStream(stub).send_request(
            None, method="GET", path="/v1/models", headers={"authorization": f"Bearer {KEY_A}x"}
        )
    assert missing.immediate == wrong.immediate
    assert missing.error()[0] == 401


async def test_a_good_key_is_routed_with_its_tenant_named_and_the_key_headers_removed() -> None:
    async with serving(closed_front_door()) as stub:
        body = completion(GEMMA)
        bearer = await EnvoyStream(stub).send_request(
            body, headers={"authorization": f"Bearer {KEY_A}", "x-gateway-api-key-name": "team-b"}
        )
        header = await EnvoyStream(stub).send_request(completion(PHI), headers={"x-api-key": KEY_B})

    assert bearer.immediate is None
    assert bearer.set_headers["x-gateway-api-key-name"] == "team-a"  # overwrites what the client said
    assert bearer.set_headers["x-gateway-base-model-name"] == GEMMA
    assert removed_headers(bearer) == ["authorization", "x-api-key"]
    assert bearer.body_chunks == [(body, True)]
    assert header.set_headers["x-gateway-api-key-name"] == "team-b"
    assert removed_headers(header) == ["authorization", "x-api-key"]


async def test_a_model_the_key_may_not_use_is_answered_exactly_as_a_model_that_does_not_exist() -> None:
    # No model oracle: the same 404, message included, listing only the key's models.
    async with serving(closed_front_door()) as stub:
        a = {"x-api-key": KEY_A}
        forbidden = await EnvoyStream(stub).send_request(completion(PHI), headers=a)
        unknown = await EnvoyStream(stub).send_request(completion(PHI.replace("Phi", "Pho")), headers=a)
        absent = await EnvoyStream(stub).send_request(completion(PHI), headers={"x-api-key": KEY_B})

    code, document = forbidden.error()
    assert code == 404
    assert document["error"] == {
        "message": f"The model '{PHI}' does not exist. Models served: {ADAPTER}, {GEMMA}.",
        "type": "not_found_error", "param": "model", "code": 404,
    }
    pho = PHI.replace("Phi", "Pho")
    message = unknown.error()[1]["error"]["message"]  # type: ignore[index]
    assert message == f"The model '{pho}' does not exist. Models served: {ADAPTER}, {GEMMA}."
    forbidden_headers = forbidden.immediate.immediate_response.headers  # type: ignore[union-attr]
    assert forbidden_headers == unknown.immediate.immediate_response.headers  # type: ignore[union-attr]
    assert absent.immediate is None  # the model does exist, for a key that may use it


async def test_over_its_limit_a_key_gets_429_with_retry_after_and_is_let_in_after_the_window() -> None:
    clock = Clock()
    async with serving(closed_front_door(clock=clock)) as stub:
        a = {"x-api-key": KEY_A}
        first = [await EnvoyStream(stub).send_request(completion(GEMMA), headers=a) for _ in range(2)]
        refused = await EnvoyStream(stub).send_request(completion(GEMMA), headers=a)
        other_key = await EnvoyStream(stub).send_request(completion(GEMMA), headers={"x-api-key": KEY_B})
        listing = await EnvoyStream(stub).send_request(None, method="GET", path="/v1/models", headers=a)
        clock.now += 1.0
        later = await EnvoyStream(stub).send_request(completion(GEMMA), headers=a)

    assert [o.immediate for o in first] == [None, None]
    code, document = refused.error()
    assert code == 429
    assert document["error"]["type"] == "rate_limit_exceeded"  # type: ignore[index]
    response = refused.immediate.immediate_response  # type: ignore[union-attr]
    assert {o.header.key: o.header.raw_value for o in response.headers.set_headers}["retry-after"] == b"1"
    assert other_key.immediate is None  # limits are per key
    assert listing.immediate.immediate_response.status.code == 200  # type: ignore[union-attr]
    assert later.immediate is None


async def test_get_v1_models_lists_only_the_keys_models() -> None:
    async with serving(closed_front_door()) as stub:
        a = await EnvoyStream(stub).send_request(None, method="GET", path="/v1/models",
                                                 headers={"x-api-key": KEY_A})
        b = await EnvoyStream(stub).send_request(None, method="GET", path="/v1/models",
                                                 headers={"x-api-key": KEY_B})
        one = await EnvoyStream(stub).send_request(None, method="GET", path=f"/v1/models/{PHI}",
                                                   headers={"x-api-key": KEY_A})
    assert listed(a) == [ADAPTER, GEMMA]
    assert listed(b) == sorted([ADAPTER, GEMMA, PHI])
    assert one.error()[0] == 404


async def test_without_a_served_list_a_restricted_key_is_answered_its_models_and_others_pass_on() -> None:
    async with serving(closed_front_door(served=False)) as stub:
        a = await EnvoyStream(stub).send_request(None, method="GET", path="/v1/models",
                                                 headers={"x-api-key": KEY_A})
        b = await EnvoyStream(stub).send_request(None, method="GET", path="/v1/models",
                                                 headers={"x-api-key": KEY_B})
    assert listed(a) == [ADAPTER, GEMMA]
    # A key that may use every model: the picker behind knows what is served.
    assert b.immediate is None
    assert b.set_headers["x-gateway-api-key-name"] == "team-b"
    assert removed_headers(b) == ["authorization", "x-api-key"]


async def test_an_open_front_door_removes_a_tenant_header_a_client_made_up() -> None:
    router = BodyBasedRouter(Telemetry("bbr"), served_models=[GEMMA])
    async with serving(router) as stub:
        forged = await EnvoyStream(stub).send_request(
            completion(GEMMA), headers={"x-gateway-api-key-name": "team-a", "authorization": "Bearer x"}
        )
        plain = await EnvoyStream(stub).send_request(completion(GEMMA))
    assert removed_headers(forged) == ["x-gateway-api-key-name"]
    assert "x-gateway-api-key-name" not in forged.set_headers
    assert removed_headers(plain) == []


async def test_requests_are_counted_by_key_name_model_and_outcome_and_no_key_is_a_label() -> None:
    telemetry = Telemetry("bbr")
    async with serving(closed_front_door(telemetry)) as stub:
        await EnvoyStream(stub).send_request(completion(GEMMA), headers={"x-api-key": KEY_A})
        await EnvoyStream(stub).send_request(completion(PHI), headers={"x-api-key": KEY_A})
        await EnvoyStream(stub).send_request(completion(PHI), headers={"x-api-key": KEY_A + "0"})
        await EnvoyStream(stub).send_request(None, method="GET", path="/v1/models")

    def samples() -> dict[tuple[str, str, str], float]:
        return {
            (s.labels["api_key_name"], s.labels["model"], s.labels["outcome"]): s.value
            for metric in telemetry.registry.collect() if metric.name == "bbr_api_key_requests"
            for s in metric.samples if s.name == "bbr_api_key_requests_total"
        }

    await eventually(lambda: sum(samples().values()) == 4)
    assert samples() == {
        ("team-a", GEMMA, "routed"): 1,
        ("team-a", PHI, "model_not_allowed"): 1,
        ("_unknown", "none", "bad_key"): 1,
        ("_none", "none", "no_key"): 1,
    }
    exposition = "".join(str(s) for m in telemetry.registry.collect() for s in m.samples)
    assert KEY_A not in exposition


def test_the_tenant_header_names_the_tenant_and_is_built_once_per_name() -> None:
    router = closed_front_door()
    tenant = router._keys.authenticate({"x-api-key": KEY_A}) if router._keys else None
    assert tenant is not None
    options = router._forwarded_tenant(tenant)
    assert [(o.header.key, o.header.raw_value) for o in options] == [
        ("x-gateway-api-key-name", b"team-a"), ("x-gateway-api-key-priority", b"0")
    ]
    assert router._forwarded_tenant(tenant) is options


async def test_a_key_entrys_priority_goes_behind_the_front_door_and_a_clients_own_is_overwritten() -> None:
    entries = [{**KEYS[0], "priority": 7}, KEYS[1]]
    router = BodyBasedRouter(Telemetry("bbr"), served_models=[GEMMA, PHI], adapters={ADAPTER: GEMMA},
                             keys=KeyCheck(KeyStore(parse_api_keys(entries), window=1.0), clock=Clock()))
    forged = {"x-gateway-api-key-priority": "1000"}
    async with serving(router) as stub:
        a = await EnvoyStream(stub).send_request(completion(GEMMA), headers={"x-api-key": KEY_A, **forged})
        b = await EnvoyStream(stub).send_request(completion(PHI), headers={"x-api-key": KEY_B, **forged})
    assert a.set_headers["x-gateway-api-key-priority"] == "7"
    assert b.set_headers["x-gateway-api-key-priority"] == "0"


def test_a_key_entrys_priority_must_be_a_whole_number() -> None:
    for bad in ("high", 1.5, True, 10_000):
        with pytest.raises(ApiKeyError, match="priority"):
            parse_api_keys([{**KEYS[0], "priority": bad}])
