"""The BBR's ext_proc protocol over a real gRPC channel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProtocolConfiguration,
)
from epp.extproc.bbr import BodyBasedRouter
from epp.telemetry import Telemetry

from tests.epp.extproc_support import EnvoyStream, header_map, serving

GEMMA = "google/gemma-2b-it"
ADAPTER = "gemma-sql-lora"


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) for a server-side effect that follows the stream's end."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - polling state owned by the server's tasks
            await asyncio.sleep(0.005)


def front_door() -> BodyBasedRouter:
    return BodyBasedRouter(Telemetry("bbr"), served_models=[GEMMA, ADAPTER], adapters={ADAPTER: GEMMA})


def upstream_like() -> BodyBasedRouter:
    return BodyBasedRouter(Telemetry("bbr"), adapters={ADAPTER: GEMMA})


async def test_the_model_and_its_base_model_become_routing_headers() -> None:
    async with serving(front_door()) as stub:
        body = json.dumps({"model": GEMMA, "messages": [{"role": "user", "content": "hi"}]}).encode()
        outcome = await EnvoyStream(stub).send_request(body, path="/v1/chat/completions")

    assert outcome.responses[0].request_headers.response.clear_route_cache
    assert outcome.set_headers == {
        "x-gateway-model-name": GEMMA,
        "x-gateway-base-model-name": GEMMA,
        "content-length": str(len(body)),
    }
    assert outcome.body_chunks == [(body, True)]


@pytest.mark.parametrize("trailers", [False, True], ids=["body", "body-and-trailers"])
async def test_the_router_ends_its_stream_once_the_request_is_routed(trailers: bool) -> None:
    # It never looks at responses; left open, each stream would live until Envoy reset it.
    async with serving(front_door()) as stub:
        stream = EnvoyStream(stub)
        outcome = await stream.send_request(json.dumps({"model": GEMMA}).encode(), trailers=trailers)
        assert outcome.set_headers["x-gateway-model-name"] == GEMMA
        await stream.expect_end()


async def test_a_lora_adapter_routes_on_its_base_model() -> None:
    async with serving(front_door()) as stub:
        outcome = await EnvoyStream(stub).send_request(json.dumps({"model": ADAPTER, "prompt": "x"}).encode())

    assert outcome.set_headers["x-gateway-model-name"] == ADAPTER
    assert outcome.set_headers["x-gateway-base-model-name"] == GEMMA


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{oops", 400, "not valid JSON"),
        (b'{"prompt": "x"}', 400, "no 'model' field"),
        (b'{"model": "meta/llama"}', 404, f"Models served: {ADAPTER}, {GEMMA}"),
    ],
    ids=["malformed-json", "no-model", "unknown-model"],
)
async def test_the_front_door_refuses_bad_requests_with_openai_style_errors(
    body: bytes, status: int, says: str
) -> None:
    async with serving(front_door()) as stub:
        code, document = (await EnvoyStream(stub).send_request(body)).error()

    assert code == status
    error = document["error"]
    assert isinstance(error, dict)
    assert error["code"] == status
    assert says in error["message"]


async def test_the_front_door_answers_get_v1_models_with_the_served_models() -> None:
    async with serving(front_door()) as stub:
        outcome = await EnvoyStream(stub).send_request(None, method="GET", path="/v1/models")

    response = outcome.immediate.immediate_response  # type: ignore[union-attr]
    assert response.status.code == 200
    assert [m["id"] for m in json.loads(response.body)["data"]] == sorted([GEMMA, ADAPTER])


async def test_without_served_models_a_request_without_model_passes_untouched() -> None:
    async with serving(upstream_like()) as stub:
        body = b'{"prompt": "no model here"}'
        outcome = await EnvoyStream(stub).send_request(body)

    assert outcome.immediate is None
    assert not outcome.responses[0].request_headers.response.HasField("header_mutation")
    assert outcome.body_chunks == [(body, True)]


async def test_without_served_models_any_model_is_routed_and_malformed_json_is_still_a_400() -> None:
    async with serving(upstream_like()) as stub:
        outcome = await EnvoyStream(stub).send_request(b'{"model": "anything"}')
        assert outcome.set_headers["x-gateway-base-model-name"] == "anything"
        code, _ = (await EnvoyStream(stub).send_request(b"not json")).error()
    assert code == 400


async def test_without_served_models_a_bodyless_request_passes_through_for_the_proxy_to_route() -> None:
    async with serving(upstream_like()) as stub:
        outcome = await EnvoyStream(stub).send_request(None, method="GET", path="/health")
    assert outcome.immediate is None
    assert outcome.responses[0].HasField("request_headers")


async def test_a_proxy_without_protocol_config_gets_its_request_headers_answered_once() -> None:
    async with serving(upstream_like()) as stub:
        body = json.dumps({"model": GEMMA, "prompt": "x"}).encode()
        outcome = await EnvoyStream(stub, protocol_config=False).send_request(body)

    assert [r.WhichOneof("response") for r in outcome.responses] == ["request_headers", "request_body"]
    assert outcome.set_headers["x-gateway-model-name"] == GEMMA
    assert outcome.body_chunks == [(body, True)]


async def test_a_body_sent_after_the_headers_were_answered_is_passed_on_not_answered_again() -> None:
    # A proxy whose request body mode says NONE yet sends the body anyway.
    async with serving(upstream_like()) as stub:
        call = stub.Process()
        await call.write(ProcessingRequest(
            request_headers=HttpHeaders(headers=header_map({":method": "POST", ":path": "/v1/completions"})),
            protocol_config=ProtocolConfiguration(request_body_mode=ProcessingMode.NONE),
        ))
        await call.write(ProcessingRequest(request_body=HttpBody(body=b'{"model": "m"}', end_of_stream=True)))
        answers = [await call.read(), await call.read()]
        call.cancel()

    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body"]
    assert answers[1].request_body.response.body_mutation.streamed_response.body == b'{"model": "m"}'


async def test_a_request_whose_empty_body_arrives_as_a_message_of_its_own_passes_through() -> None:
    # (A front door answers such a request: tests/epp/test_api_routes_protocol.py.)
    async with serving(upstream_like()) as stub:
        outcome = await EnvoyStream(stub).send_request(b"", method="GET", path="/health")

    assert outcome.immediate is None
    assert not outcome.responses[0].request_headers.response.HasField("header_mutation")
    assert outcome.body_chunks == [(b"", True)]


async def test_the_front_door_serves_and_lists_a_configured_adapter_not_named_in_served_models() -> None:
    # The one box passes the base models as --served-models and each adapter as --adapter A=BASE.
    router = BodyBasedRouter(Telemetry("bbr"), served_models=[GEMMA], adapters={ADAPTER: GEMMA})
    async with serving(router) as stub:
        routed = await EnvoyStream(stub).send_request(json.dumps({"model": ADAPTER, "prompt": "x"}).encode())
        listing = await EnvoyStream(stub).send_request(None, method="GET", path="/v1/models")

    assert routed.immediate is None
    assert routed.set_headers["x-gateway-base-model-name"] == GEMMA
    response = listing.immediate.immediate_response  # type: ignore[union-attr]
    assert [m["id"] for m in json.loads(response.body)["data"]] == sorted([GEMMA, ADAPTER])


async def test_without_served_models_made_up_models_are_counted_as_other_not_one_series_each() -> None:
    telemetry = Telemetry("bbr")
    async with serving(BodyBasedRouter(telemetry, adapters={ADAPTER: GEMMA})) as stub:
        for model in [f"made-up-{i}" for i in range(20)] + [ADAPTER, GEMMA]:
            await EnvoyStream(stub).send_request(json.dumps({"model": model}).encode())
        await EnvoyStream(stub).send_request(b'{"prompt": "no model"}')

    def labels() -> dict[str, float]:
        return {
            sample.labels["model"]: sample.value
            for metric in telemetry.registry.collect() if metric.name == "bbr_requests"
            for sample in metric.samples if sample.name == "bbr_requests_total"
        }

    await eventually(lambda: sum(labels().values()) == 23)
    assert labels() == {"other": 20, ADAPTER: 1, GEMMA: 1, "none": 1}


async def test_a_body_over_the_size_limit_is_a_413() -> None:
    router = BodyBasedRouter(Telemetry("bbr"), max_body_bytes=100)
    async with serving(router) as stub:
        body = json.dumps({"model": GEMMA, "prompt": "x" * 200}).encode()
        code, _ = (await EnvoyStream(stub).send_request(body, chunk_size=50, content_length=False)).error()
    assert code == 413


async def test_a_body_declared_over_the_size_limit_is_a_413_on_its_headers() -> None:
    router = BodyBasedRouter(Telemetry("bbr"), max_body_bytes=100)
    async with serving(router) as stub:
        call = stub.Process()
        headers = {":method": "POST", ":path": "/v1/completions", "content-length": "101"}
        await call.write(ProcessingRequest(
            request_headers=HttpHeaders(headers=header_map(headers), end_of_stream=False),
            protocol_config=ProtocolConfiguration(request_body_mode=ProcessingMode.FULL_DUPLEX_STREAMED),
        ))
        async with asyncio.timeout(5):  # no body byte is sent: the answer comes on the headers
            answer = await call.read()
        call.cancel()
    assert answer.immediate_response.status.code == 413


async def test_the_front_door_answers_the_retrieval_of_one_model() -> None:
    async with serving(front_door()) as stub:
        one = await EnvoyStream(stub).send_request(None, method="GET", path=f"/v1/models/{ADAPTER}")
        code, _ = (await EnvoyStream(stub).send_request(None, method="GET", path="/v1/models/nope")).error()

    response = one.immediate.immediate_response  # type: ignore[union-attr]
    assert json.loads(response.body)["id"] == ADAPTER
    assert code == 404


async def test_the_front_door_answers_bodyless_api_requests_as_the_unified_pool_does() -> None:
    # The same answers as the EPP's in a unified pool (tests/epp/test_bad_input_e2e.py checks both).
    async with serving(front_door()) as stub:
        read = (await EnvoyStream(stub).send_request(None, method="GET", path="/v1/other")).error()
        post = (await EnvoyStream(stub).send_request(None, path="/v1/chat/completions")).error()
    assert (read[0], read[1]["error"]["type"]) == (404, "not_found_error")
    assert (post[0], post[1]["error"]["type"]) == (400, "invalid_request_error")


async def test_the_front_door_refuses_paths_outside_the_api_on_their_headers_even_with_a_model() -> None:
    async with serving(front_door()) as stub:
        outcome = await EnvoyStream(stub).send_request(json.dumps({"model": GEMMA}).encode(), path="/other")
    code, document = outcome.error()
    assert (code, document["error"]["type"]) == (404, "not_found_error")  # type: ignore[index]
    assert len(outcome.responses) == 1  # answered on the headers: no body was read


async def test_an_unknown_model_of_a_megabyte_gets_an_answer_of_a_few_hundred_bytes() -> None:
    async with serving(front_door()) as stub:
        body = json.dumps({"model": "x" * 1_000_000}).encode()
        outcome = await EnvoyStream(stub).send_request(body)
    immediate = outcome.immediate
    assert immediate is not None
    assert len(immediate.immediate_response.body) < 1000
    code, error = outcome.error()
    detail = error["error"]
    assert isinstance(detail, dict)
    assert (code, detail["type"]) == (404, "not_found_error")
    assert "(1000000 characters)" in detail["message"]
