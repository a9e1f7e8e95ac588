"""The EPP's ext_proc protocol over a real gRPC channel, with a scripted Envoy on the other end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import grpc
import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody, ProcessingRequest
from epp.contract import TENANT_HEADER
from epp.datastore import Datastore, Endpoint
from epp.extproc import StreamDriver
from epp.extproc.picker import EndpointPicker
from epp.scheduling import SaturationDetector
from epp.scheduling.types import SchedulingResult
from epp.telemetry import Telemetry

from tests.epp.extproc_support import EnvoyStream, LeastBusyScheduler, Outcome, pool, serving, subset_hint

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"


def gemma_and_phi() -> Datastore:
    return pool(("10.0.0.1", 8000, [GEMMA]), ("10.0.0.2", 8000, [PHI]), ("10.0.0.3", 8000, [PHI]))


def picker(datastore: Datastore) -> EndpointPicker:
    return EndpointPicker(datastore, LeastBusyScheduler(), Telemetry("epp", datastore))


def completion(model: str, prompt: str = "Hello") -> bytes:
    return json.dumps({"model": model, "prompt": prompt, "max_tokens": 8}).encode()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) for a server-side effect that follows the stream's end."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - polling state owned by the server's tasks
            await asyncio.sleep(0.005)


async def test_a_gemma_request_is_routed_to_the_gemma_pod_with_headers_metadata_and_its_body() -> None:
    datastore = gemma_and_phi()
    async with serving(picker(datastore)) as stub:
        stream = EnvoyStream(stub)
        body = completion(GEMMA)
        outcome = await stream.send_request(body)

        first = outcome.responses[0]
        assert first.request_headers.response.clear_route_cache
        assert outcome.set_headers == {"x-gateway-destination-endpoint": "10.0.0.1:8000",
                                       "content-length": str(len(body))}
        lb = first.dynamic_metadata.fields["envoy.lb"].struct_value.fields
        assert lb["x-gateway-destination-endpoint"].string_value == "10.0.0.1:8000"
        assert outcome.body_chunks == [(body, True)]
        assert datastore.get("10.0.0.1:8000").in_flight == 1  # type: ignore[union-attr]

        await stream.send_response(200, b'{"usage": {"prompt_tokens": 3, "completion_tokens": 8}}')
        assert datastore.get("10.0.0.1:8000").in_flight == 0  # type: ignore[union-attr]


async def test_a_large_body_is_streamed_back_in_chunks_of_at_most_62000_bytes() -> None:
    datastore = gemma_and_phi()
    async with serving(picker(datastore)) as stub:
        body = completion(PHI, "x" * 200_000)
        outcome = await EnvoyStream(stub).send_request(body, chunk_size=50_000)

        chunks = outcome.body_chunks
        assert len(chunks) == 4
        assert all(len(chunk) <= 62_000 for chunk, _ in chunks)
        assert b"".join(chunk for chunk, _ in chunks) == body
        assert [end for _, end in chunks] == [False, False, False, True]
        assert outcome.set_headers["content-length"] == str(len(body))


async def test_a_request_whose_body_ends_with_trailers_is_routed_and_echoed() -> None:
    datastore = gemma_and_phi()
    async with serving(picker(datastore)) as stub:
        body = completion(GEMMA)
        outcome = await EnvoyStream(stub).send_request(body, trailers=True)

        assert outcome.set_headers["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
        assert b"".join(chunk for chunk, _ in outcome.body_chunks) == body
        assert outcome.responses[-1].HasField("request_trailers")


@pytest.mark.parametrize(
    ("body", "status", "error_type", "param", "says"),
    [
        (b"{not json", 400, "invalid_request_error", None, "not valid JSON"),
        (b'["a list"]', 400, "invalid_request_error", None, "must be a JSON object"),
        (b'{"prompt": "no model"}', 400, "invalid_request_error", "model", "no 'model' field"),
        (b'{"model": 7}', 400, "invalid_request_error", "model", "non-empty string"),
        (completion("meta/llama-70b"), 404, "not_found_error", "model", f"{GEMMA}, {PHI}"),
    ],
    ids=["malformed-json", "not-an-object", "no-model", "model-not-a-string", "unknown-model"],
)
async def test_a_bad_request_gets_an_openai_style_json_error(
    body: bytes, status: int, error_type: str, param: str | None, says: str
) -> None:
    datastore = gemma_and_phi()
    async with serving(picker(datastore)) as stub:
        code, document = (await EnvoyStream(stub).send_request(body)).error()

    assert code == status
    error = document["error"]
    assert isinstance(error, dict)
    assert error["type"] == error_type
    assert error["param"] == param
    assert error["code"] == status
    assert says in error["message"]
    assert all(endpoint.in_flight == 0 for endpoint in datastore)


async def test_a_subset_hint_that_matches_no_endpoint_is_a_503() -> None:
    datastore = pool(("10.0.0.1", 8000, [GEMMA]))
    async with serving(picker(datastore)) as stub:
        hint = subset_hint(["10.0.0.9:8000"])
        code, document = (await EnvoyStream(stub).send_request(completion(GEMMA), metadata=hint)).error()

    assert code == 503
    assert "subset" in document["error"]["message"]  # type: ignore[index]


async def test_the_subset_hint_limits_the_pick_to_its_endpoints() -> None:
    datastore = gemma_and_phi()
    async with serving(picker(datastore)) as stub:
        for _ in range(3):
            stream = EnvoyStream(stub)
            outcome = await stream.send_request(completion(PHI), metadata=subset_hint(["10.0.0.3:8000"]))
            assert outcome.set_headers["x-gateway-destination-endpoint"] == "10.0.0.3:8000"


async def test_an_empty_subset_hint_is_a_503() -> None:
    async with serving(picker(gemma_and_phi())) as stub:
        outcome = await EnvoyStream(stub).send_request(completion(PHI), metadata=subset_hint([]))
        code, document = outcome.error()

    assert code == 503
    assert document["error"]["type"] == "service_unavailable"  # type: ignore[index]


async def test_no_ready_endpoint_for_a_known_model_is_a_503() -> None:
    class NobodyScheduler(LeastBusyScheduler):
        def schedule(self, request, candidates, *, explain=False):  # type: ignore[no-untyped-def]
            result = super().schedule(request, [])
            return result

    datastore = gemma_and_phi()
    servicer = EndpointPicker(datastore, NobodyScheduler(), Telemetry("epp", datastore))
    async with serving(servicer) as stub:
        code, document = (await EnvoyStream(stub).send_request(completion(GEMMA))).error()

    assert code == 503
    assert GEMMA in document["error"]["message"]  # type: ignore[index]


async def test_a_model_scaled_to_zero_gets_a_503_not_a_404() -> None:
    datastore = pool(("10.0.0.2", 8000, [PHI]), pool_models=[GEMMA, PHI])  # the gemma pods are gone
    servicer = EndpointPicker(datastore, LeastBusyScheduler(), Telemetry("epp", datastore))
    async with serving(servicer) as stub:
        code, document = (await EnvoyStream(stub).send_request(completion(GEMMA))).error()
        unknown, _ = (await EnvoyStream(stub).send_request(completion("mistral-7b"))).error()

    assert code == 503
    assert "No ready endpoint serves the model 'google/gemma-2b-it'" in document["error"]["message"]  # type: ignore[index]
    assert unknown == 404


async def test_an_empty_pool_knows_its_configured_models() -> None:
    datastore = Datastore(pool_models=[GEMMA])
    datastore.synced = True
    telemetry = Telemetry("epp", datastore)
    servicer = EndpointPicker(datastore, LeastBusyScheduler(), telemetry)
    async with serving(servicer) as stub:
        code, _ = (await EnvoyStream(stub).send_request(completion(GEMMA))).error()
    assert code == 503


async def test_a_pod_whose_models_become_known_is_picked_and_a_removed_one_is_not() -> None:
    datastore = gemma_and_phi()
    servicer = picker(datastore)
    async with serving(servicer) as stub:
        unknown, _ = (await EnvoyStream(stub).send_request(completion("Qwen/Qwen2.5-3B-Instruct"))).error()
        qwen = datastore.upsert(Endpoint(name="qwen-0", ip="10.0.0.9", port=8000))
        datastore.set_models(qwen.address, frozenset({"Qwen/Qwen2.5-3B-Instruct"}), {})
        routed = await EnvoyStream(stub).send_request(completion("Qwen/Qwen2.5-3B-Instruct"))
        datastore.remove("10.0.0.1:8000")
        gone, _ = (await EnvoyStream(stub).send_request(completion(GEMMA))).error()

    assert unknown == 404
    assert routed.set_headers["x-gateway-destination-endpoint"] == "10.0.0.9:8000"
    assert gone == 404  # the only gemma pod left the pool and no pool model names it


async def test_a_saturated_pool_sheds_with_429_only_when_shedding_is_configured() -> None:
    class AlwaysSaturated:
        def saturated(self, endpoints, now):  # type: ignore[no-untyped-def]
            return True

    datastore = gemma_and_phi()
    telemetry = Telemetry("epp", datastore)
    shedding = EndpointPicker(datastore, LeastBusyScheduler(), telemetry, saturation=AlwaysSaturated(),
                              shed_on_saturation=True)
    async with serving(shedding) as stub:
        code, document = (await EnvoyStream(stub).send_request(completion(GEMMA))).error()
    assert code == 429
    assert document["error"]["code"] == 429  # type: ignore[index]

    tolerant = EndpointPicker(datastore, LeastBusyScheduler(), telemetry, saturation=AlwaysSaturated())
    async with serving(tolerant) as stub:
        outcome = await EnvoyStream(stub).send_request(completion(GEMMA))
    assert outcome.immediate is None


async def test_get_v1_models_lists_every_served_model_identically_on_every_call() -> None:
    async with serving(picker(gemma_and_phi())) as stub:
        bodies = []
        for _ in range(3):
            outcome = await EnvoyStream(stub).send_request(None, method="GET", path="/v1/models?x=1")
            response = outcome.immediate.immediate_response  # type: ignore[union-attr]
            assert response.status.code == 200
            bodies.append(response.body)

    assert bodies[0] == bodies[1] == bodies[2]
    document = json.loads(bodies[0])
    assert document["object"] == "list"
    assert [m["id"] for m in document["data"]] == [GEMMA, PHI]


async def test_a_read_of_another_path_is_a_404_and_a_post_without_body_a_400() -> None:
    async with serving(picker(gemma_and_phi())) as stub:
        code, body = (await EnvoyStream(stub).send_request(None, method="GET", path="/v1/other")).error()
        assert (code, body["error"]["type"]) == (404, "not_found_error")
        code, body = (await EnvoyStream(stub).send_request(None, path="/v1/completions")).error()
        assert (code, body["error"]["type"]) == (400, "invalid_request_error")


async def test_in_flight_returns_to_zero_after_a_backend_error() -> None:
    datastore = gemma_and_phi()
    async with serving(picker(datastore)) as stub:
        stream = EnvoyStream(stub)
        await stream.send_request(completion(GEMMA))
        await stream.send_response(500, b'{"error": {"message": "boom"}}')
    assert datastore.get("10.0.0.1:8000").in_flight == 0  # type: ignore[union-attr]


async def test_in_flight_returns_to_zero_when_envoy_cancels_the_stream() -> None:
    datastore = gemma_and_phi()
    gemma = datastore.get("10.0.0.1:8000")
    assert gemma is not None
    async with serving(picker(datastore)) as stub:
        stream = EnvoyStream(stub)
        await stream.send_request(completion(GEMMA))
        assert gemma.in_flight == 1
        stream.cancel()
        await eventually(lambda: gemma.in_flight == 0)


async def test_in_flight_spreads_and_returns_to_zero_under_concurrent_streams() -> None:
    datastore = gemma_and_phi()
    async with serving(picker(datastore)) as stub:
        streams = [EnvoyStream(stub) for _ in range(6)]
        outcomes = await asyncio.gather(*(s.send_request(completion(PHI)) for s in streams))
        picked = [o.set_headers["x-gateway-destination-endpoint"] for o in outcomes]
        assert sorted(picked) == ["10.0.0.2:8000"] * 3 + ["10.0.0.3:8000"] * 3
        await asyncio.gather(*(s.send_response(200, b"{}") for s in streams))
    assert [e.in_flight for e in datastore] == [0, 0, 0]


async def test_a_streamed_response_is_echoed_and_its_usage_counted() -> None:
    datastore = gemma_and_phi()
    telemetry = Telemetry("epp", datastore)
    servicer = EndpointPicker(datastore, LeastBusyScheduler(), telemetry)
    sse = (
        b'data: {"choices": [{"text": "hi"}]}\n\n'
        b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}\n\n'
        b"data: [DONE]\n\n"
    )
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub)
        await stream.send_request(completion(GEMMA))
        answers = await stream.send_response(200, sse, content_type="text/event-stream", chunk_size=40)

    echoed = b"".join(a.response_body.response.body_mutation.streamed_response.body for a in answers[1:])
    assert echoed == sse
    assert answers[-1].response_body.response.body_mutation.streamed_response.end_of_stream
    tokens = telemetry.registry.get_sample_value("epp_tokens_total", {"model": GEMMA, "kind": "completion"})
    assert tokens == 2


class RecordingRefresher:
    """The model prober's side of the picker: records which endpoints it was asked to re-read."""

    def __init__(self) -> None:
        self.refreshed: list[str] = []

    def request_refresh(self, address: str) -> bool:
        self.refreshed.append(address)
        return True


async def test_a_backend_that_stopped_serving_the_model_gets_its_models_refreshed() -> None:
    refresher = RecordingRefresher()
    datastore = gemma_and_phi()
    telemetry = Telemetry("epp", datastore)
    servicer = EndpointPicker(datastore, LeastBusyScheduler(), telemetry, refresher=refresher)
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub)
        await stream.send_request(completion(GEMMA))
        await stream.send_response(
            404, b'{"error": {"message": "The model `google/gemma-2b-it` does not exist.", "code": 404}}'
        )
    assert refresher.refreshed == ["10.0.0.1:8000"]


async def test_requests_are_counted_by_model_and_outcome() -> None:
    datastore = gemma_and_phi()
    telemetry = Telemetry("epp", datastore)
    async with serving(EndpointPicker(datastore, LeastBusyScheduler(), telemetry)) as stub:
        stream = EnvoyStream(stub)
        await stream.send_request(completion(GEMMA))
        await stream.send_response(200, b"{}")
        await EnvoyStream(stub).send_request(completion("nope"))

    sample = telemetry.registry.get_sample_value
    assert sample("epp_requests_total", {"model": GEMMA, "outcome": "routed"}) == 1
    assert sample("epp_requests_total", {"model": "other", "outcome": "unknown_model"}) == 1


async def test_in_streamed_response_mode_a_complete_answer_ends_the_request_at_its_headers() -> None:
    datastore = gemma_and_phi()
    gemma = datastore.get("10.0.0.1:8000")
    assert gemma is not None
    async with serving(picker(datastore)) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(completion(GEMMA))
        assert gemma.in_flight == 1
        answer = await stream.send_response_headers(200)

    assert answer.HasField("response_headers")
    assert answer.mode_override.response_body_mode == ProcessingMode.NONE
    assert gemma.in_flight == 0


async def test_in_streamed_response_mode_an_sse_stream_ends_the_request_at_its_headers() -> None:
    # Nothing in an unmetered stream's body is needed: the EPP is done with it once it has begun, so
    # an EPP replica that dies later cannot cut it.
    datastore = gemma_and_phi()
    gemma = datastore.get("10.0.0.1:8000")
    assert gemma is not None
    async with serving(picker(datastore)) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(completion(GEMMA))
        assert gemma.in_flight == 1
        answer = await stream.send_response_headers(200, content_type="text/event-stream")
        assert answer.mode_override.response_body_mode == ProcessingMode.NONE
        assert gemma.in_flight == 0
        assert await stream.call.read() == grpc.aio.EOF


async def test_in_streamed_response_mode_a_tenants_sse_stream_is_followed_to_its_end() -> None:
    # Behind a front door with API keys a stream's usage is metered: the EPP reads it to its end.
    datastore = gemma_and_phi()
    gemma = datastore.get("10.0.0.1:8000")
    assert gemma is not None
    async with serving(picker(datastore)) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(completion(GEMMA), headers={TENANT_HEADER: "team-a"})
        answer = await stream.send_response_headers(200, content_type="text/event-stream")
        assert not answer.HasField("mode_override")
        assert gemma.in_flight == 1
        await stream.write(ProcessingRequest(response_body=HttpBody(body=b"data: {}\n\n")))
        assert (await stream.call.read()).HasField("response_body")
        assert gemma.in_flight == 1
        await stream.write(ProcessingRequest(response_body=HttpBody(body=b"data: [DONE]\n\n",
                                                                         end_of_stream=True)))
        assert (await stream.call.read()).HasField("response_body")
    assert gemma.in_flight == 0


async def test_in_streamed_response_mode_an_error_body_is_buffered_and_read() -> None:
    refresher = RecordingRefresher()
    datastore = gemma_and_phi()
    telemetry = Telemetry("epp", datastore)
    servicer = EndpointPicker(datastore, LeastBusyScheduler(), telemetry, refresher=refresher)
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(completion(GEMMA))
        answer = await stream.send_response_headers(404)
        assert answer.mode_override.response_body_mode == ProcessingMode.BUFFERED
        body = b'{"error": {"message": "The model `google/gemma-2b-it` does not exist."}}'
        await stream.write(ProcessingRequest(response_body=HttpBody(body=body, end_of_stream=True)))
        await stream.call.read()
    assert refresher.refreshed == ["10.0.0.1:8000"]
    assert datastore.get("10.0.0.1:8000").in_flight == 0  # type: ignore[union-attr]


async def test_a_proxy_that_does_not_send_its_protocol_config_gets_its_request_routed_on_the_body() -> None:
    # Envoy sends protocol_config only since 1.34: without it the filter is taken to be full duplex.
    datastore = gemma_and_phi()
    async with serving(picker(datastore)) as stub:
        body = completion(GEMMA)
        outcome = await EnvoyStream(stub, protocol_config=False).send_request(body)

    assert outcome.immediate is None
    assert outcome.set_headers["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
    assert outcome.body_chunks == [(body, True)]


async def test_get_v1_models_whose_empty_body_arrives_as_a_message_of_its_own_is_answered() -> None:
    async with serving(picker(gemma_and_phi())) as stub:
        outcome = await EnvoyStream(stub).send_request(b"", method="GET", path="/v1/models")

    response = outcome.immediate.immediate_response  # type: ignore[union-attr]
    assert response.status.code == 200
    assert [m["id"] for m in json.loads(response.body)["data"]] == [GEMMA, PHI]


async def test_json_nested_too_deeply_to_parse_is_a_400() -> None:
    async with serving(picker(gemma_and_phi())) as stub:
        code, document = (await EnvoyStream(stub).send_request(b"[" * 200_000)).error()

    assert code == 400
    assert "too deeply" in document["error"]["message"]  # type: ignore[index]


async def test_a_bug_in_a_scheduling_plugin_is_a_500_not_a_broken_stream() -> None:
    class BrokenScheduler:
        def schedule(self, request, candidates, *, explain=False):  # type: ignore[no-untyped-def]
            raise KeyError("a plugin bug")

    datastore = gemma_and_phi()
    telemetry = Telemetry("epp", datastore)
    async with serving(EndpointPicker(datastore, BrokenScheduler(), telemetry)) as stub:
        code, document = (await EnvoyStream(stub).send_request(completion(GEMMA))).error()

    assert code == 500
    assert document["error"]["type"] == "api_error"  # type: ignore[index]
    await eventually(
        lambda: telemetry.registry.get_sample_value(
            "epp_requests_total", {"model": GEMMA, "outcome": "internal_error"}
        ) == 1
    )
    assert all(endpoint.in_flight == 0 for endpoint in datastore)


async def test_with_shedding_on_a_model_scaled_to_zero_gets_a_503_not_a_429() -> None:
    datastore = pool(("10.0.0.1", 8000, [GEMMA]), pool_models=[PHI])
    shedding = EndpointPicker(datastore, LeastBusyScheduler(), Telemetry("epp", datastore),
                              saturation=SaturationDetector(), shed_on_saturation=True)
    async with serving(shedding) as stub:
        code, _ = (await EnvoyStream(stub).send_request(completion(PHI))).error()
    assert code == 503


async def test_shedding_judges_only_the_endpoints_in_the_subset_hint() -> None:
    class SaturatedWhenPhi2IsIn:
        def saturated(self, endpoints, now):  # type: ignore[no-untyped-def]
            return any(e.address == "10.0.0.2:8000" for e in endpoints)

    datastore = gemma_and_phi()
    shedding = EndpointPicker(datastore, LeastBusyScheduler(), Telemetry("epp", datastore),
                              saturation=SaturatedWhenPhi2IsIn(), shed_on_saturation=True)
    async with serving(shedding) as stub:
        outcome = await EnvoyStream(stub).send_request(
            completion(PHI), metadata=subset_hint(["10.0.0.3:8000"])
        )
        assert outcome.set_headers["x-gateway-destination-endpoint"] == "10.0.0.3:8000"
        code, _ = (await EnvoyStream(stub).send_request(
            completion(PHI), metadata=subset_hint(["10.0.0.2:8000"])
        )).error()
    assert code == 429


async def test_a_body_over_the_size_limit_is_a_413_before_it_is_all_buffered() -> None:
    datastore = gemma_and_phi()
    servicer = EndpointPicker(datastore, LeastBusyScheduler(), Telemetry("epp", datastore),
                              max_body_bytes=1_000)
    async with serving(servicer) as stub:
        # A chunked upload (no content-length): refused once the limit is passed.
        too_large = EnvoyStream(stub).send_request(completion(GEMMA, "x" * 2_500), chunk_size=800,
                                                   content_length=False)
        code, document = (await too_large).error()
        routed = await EnvoyStream(stub).send_request(completion(GEMMA, "x" * 900))

    assert code == 413
    assert document["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "1000 bytes" in document["error"]["message"]  # type: ignore[index]
    assert routed.immediate is None


async def test_a_client_can_retrieve_one_model_and_head_the_model_list() -> None:
    async with serving(picker(gemma_and_phi())) as stub:

        async def bodyless(method: str, path: str) -> Outcome:
            return await EnvoyStream(stub).send_request(None, method=method, path=path)

        one = await bodyless("GET", f"/v1/models/{GEMMA}")
        escaped = await bodyless("GET", "/v1/models/google%2Fgemma-2b-it")
        head = await bodyless("HEAD", "/v1/models")
        code, document = (await bodyless("GET", "/v1/models/nope")).error()

    for outcome in (one, escaped):
        response = outcome.immediate.immediate_response  # type: ignore[union-attr]
        assert response.status.code == 200
        assert json.loads(response.body) == {"id": GEMMA, "object": "model", "created": 0,
                                             "owned_by": "gke-llm-gateway"}
    assert head.immediate.immediate_response.status.code == 200  # type: ignore[union-attr]
    assert code == 404
    assert document["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert f"Models served: {GEMMA}, {PHI}" in document["error"]["message"]  # type: ignore[index]


async def test_an_ipv6_pod_is_named_in_brackets_in_the_header_and_the_metadata() -> None:
    datastore = pool(("fd00::1", 8000, [GEMMA]))
    async with serving(picker(datastore)) as stub:
        outcome = await EnvoyStream(stub).send_request(completion(GEMMA))
        hint = subset_hint(["[fd00:0::1]:8000"])
        hinted = await EnvoyStream(stub).send_request(completion(GEMMA), metadata=hint)

    assert outcome.set_headers["x-gateway-destination-endpoint"] == "[fd00::1]:8000"
    lb = outcome.responses[0].dynamic_metadata.fields["envoy.lb"].struct_value.fields
    assert lb["x-gateway-destination-endpoint"].string_value == "[fd00::1]:8000"
    assert hinted.set_headers["x-gateway-destination-endpoint"] == "[fd00::1]:8000"


async def test_with_fallbacks_the_metadata_ranks_every_pick_and_the_header_names_the_first() -> None:
    class RankingScheduler(LeastBusyScheduler):
        def schedule(self, request, candidates, *, explain=False):  # type: ignore[no-untyped-def]
            ranked = tuple(e for e in candidates if e.serves(request.model))[::-1]
            return SchedulingResult(endpoint=ranked[0], endpoints=ranked)

    datastore = gemma_and_phi()
    async with serving(EndpointPicker(datastore, RankingScheduler(), Telemetry("epp", datastore))) as stub:
        stream = EnvoyStream(stub)
        outcome = await stream.send_request(completion(PHI))
        # Envoy's ORIGINAL_DST reads one address from the header; the metadata carries the fallbacks.
        assert outcome.set_headers["x-gateway-destination-endpoint"] == "10.0.0.3:8000"
        lb = outcome.responses[0].dynamic_metadata.fields["envoy.lb"].struct_value.fields
        assert lb["x-gateway-destination-endpoint"].string_value == "10.0.0.3:8000,10.0.0.2:8000"
        assert datastore.get("10.0.0.3:8000").in_flight == 1  # type: ignore[union-attr]
        assert datastore.get("10.0.0.2:8000").in_flight == 0  # type: ignore[union-attr]
        await stream.send_response(200, b"{}")
    assert [e.in_flight for e in datastore] == [0, 0, 0]


async def test_the_model_list_answered_to_an_empty_body_message_ends_the_stream_and_counts_once() -> None:
    datastore = gemma_and_phi()
    telemetry = Telemetry("epp", datastore)
    async with serving(EndpointPicker(datastore, LeastBusyScheduler(), telemetry)) as stub:
        # The fake Envoy reads on after the ImmediateResponse: an echoed body chunk would fail here.
        outcome = await EnvoyStream(stub).send_request(b"", method="GET", path="/v1/models")

    assert outcome.immediate is not None
    assert len(outcome.responses) == 1
    sample = telemetry.registry.get_sample_value
    await eventually(lambda: sample("epp_requests_total", {"model": "none", "outcome": "models"}) == 1)
    assert sample("epp_requests_total", {"model": "none", "outcome": "routed"}) is None


async def test_the_fake_envoy_catches_a_message_sent_after_an_immediate_response() -> None:
    from epp.extproc.messages import immediate, request_body_chunks

    class TalksAfterItsAnswer(StreamDriver[None]):
        async def Process(self, request_iterator, context):  # type: ignore[no-untyped-def,override]
            await context.read()
            await context.write(immediate(200, b"{}"))
            for chunk in request_body_chunks(b""):
                await context.write(chunk)

    async with serving(TalksAfterItsAnswer(picker(gemma_and_phi()))) as stub:
        with pytest.raises(AssertionError, match="after its ImmediateResponse"):
            await EnvoyStream(stub).send_request(None, method="GET", path="/v1/models")


async def test_in_flight_follows_the_address_when_a_pod_is_removed_and_added_back() -> None:
    datastore = gemma_and_phi()
    async with serving(picker(datastore)) as stub:
        stream = EnvoyStream(stub)
        await stream.send_request(completion(GEMMA))
        # A readiness flap: the pod leaves and comes back (a new Endpoint on the same address).
        datastore.remove("10.0.0.1:8000")
        back = datastore.upsert(Endpoint(name="gemma-again", ip="10.0.0.1", port=8000))
        datastore.set_models(back.address, frozenset({GEMMA}), {})
        assert back.in_flight == 1
        second = EnvoyStream(stub)
        await second.send_request(completion(GEMMA))
        assert back.in_flight == 2
        await stream.send_response(200, b"{}")
        assert back.in_flight == 1
        await second.send_response(200, b"{}")
    assert back.in_flight == 0
