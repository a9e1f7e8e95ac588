"""The picker with the answer check over a real ext_proc stream: a sampled answer's body is read and
its model checked; with the check off an answer passes unread. And the upstream-named series."""

from __future__ import annotations

import json

import grpc
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody, ProcessingRequest
from epp.answer_check import AnswerCheck
from epp.extproc.picker import EndpointPicker
from epp.telemetry import Telemetry

from tests.epp.extproc_support import EnvoyStream, LeastBusyScheduler, pool, serving
from tests.epp.test_tenant_usage_protocol import eventually

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"


def picker(rate: float) -> tuple[EndpointPicker, Telemetry]:
    datastore = pool(("10.0.0.1", 8000, [GEMMA]), pool_models=[GEMMA, PHI])
    telemetry = Telemetry("epp", datastore, pool="gemma-pool")
    check = AnswerCheck(rate, telemetry) if rate else None
    return EndpointPicker(datastore, LeastBusyScheduler(), telemetry, answer_check=check), telemetry


def request() -> bytes:
    return json.dumps({"model": GEMMA, "messages": [{"role": "user", "content": "hi"}]}).encode()


def answer(model: str) -> bytes:
    return json.dumps({"id": "1", "object": "chat.completion", "model": model, "choices": []}).encode()


def sample(telemetry: Telemetry, name: str, labels: dict[str, str]) -> float | None:
    return telemetry.registry.get_sample_value(name, labels)


async def _answered(servicer: EndpointPicker, body: bytes, expect_read: bool) -> None:
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(request())
        reply = await stream.send_response_headers(200)
        read = reply.mode_override.response_body_mode == ProcessingMode.BUFFERED_PARTIAL
        assert read is expect_read
        if read:
            await stream.write(ProcessingRequest(response_body=HttpBody(body=body, end_of_stream=True)))
            assert (await stream.call.read()).HasField("response_body")


async def test_a_sampled_answer_from_another_model_counts_as_misrouted_by_pod() -> None:
    servicer, telemetry = picker(1.0)
    await _answered(servicer, answer(PHI), expect_read=True)
    misrouted = {"model": GEMMA, "model_server_pod": "pod-8000"}
    await eventually(lambda: sample(telemetry, "epp_misrouted_total", misrouted) == 1)
    assert sample(telemetry, "epp_answer_checks_total", {"model": GEMMA}) == 1
    # the answer was read to its end: its latency is observed under upstream's names
    for prefix in ("llm_d_epp", "inference_objective"):
        labels = {"model_name": GEMMA, "target_model_name": GEMMA}
        assert sample(telemetry, f"{prefix}_request_ttft_seconds_count", labels) == 1
        assert sample(telemetry, f"{prefix}_request_duration_seconds_count", labels) == 1
        assert sample(telemetry, f"{prefix}_request_total", labels) == 1


async def test_a_sampled_answer_from_the_right_model_is_checked_not_misrouted() -> None:
    servicer, telemetry = picker(1.0)
    await _answered(servicer, answer(GEMMA), expect_read=True)
    await eventually(lambda: sample(telemetry, "epp_answer_checks_total", {"model": GEMMA}) == 1)
    assert sample(telemetry, "epp_misrouted_total", {"model": GEMMA, "model_server_pod": "pod-8000"}) is None
    assert sample(telemetry, "epp_responses_total", {"model": GEMMA, "code": "2xx"}) == 1


async def test_with_the_check_off_the_answer_passes_unread() -> None:
    servicer, telemetry = picker(0.0)
    await _answered(servicer, answer(PHI), expect_read=False)
    await eventually(lambda: sample(telemetry, "epp_responses_total", {"model": GEMMA, "code": "2xx"}) == 1)
    assert sample(telemetry, "epp_answer_checks_total", {"model": GEMMA}) is None


async def test_a_model_without_a_ready_pod_is_a_503_counted_under_both_names() -> None:
    servicer, telemetry = picker(0.0)
    phi = json.dumps({"model": PHI, "messages": []}).encode()
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(phi)
    labels = {"model_name": PHI, "target_model_name": PHI, "error_code": "no_endpoint"}
    await eventually(lambda: sample(telemetry, "inference_objective_request_error_total", labels) == 1)
    assert sample(telemetry, "llm_d_epp_request_error_total", labels) == 1
    assert sample(telemetry, "epp_responses_total", {"model": PHI, "code": "5xx"}) == 1
    assert sample(telemetry, "epp_model_ready_endpoints", {"model": PHI}) == 0
    assert sample(telemetry, "epp_model_ready_endpoints", {"model": GEMMA}) == 1
    for name in ("inference_pool_ready_pods", "llm_d_epp_ready_endpoints"):
        assert sample(telemetry, name, {"name": "gemma-pool"}) == 1
    assert sample(telemetry, "inference_pool_per_pod_queue_size",
                  {"name": "gemma-pool", "model_server_pod": "pod-8000"}) == 0


async def test_a_sampled_stream_is_left_after_its_first_chunk_so_a_lost_replica_cuts_nothing() -> None:
    servicer, telemetry = picker(1.0)
    first = b'data: {"id":"1","object":"chat.completion.chunk","model":"' + GEMMA.encode() + b'"}\n\n'
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(request())
        reply = await stream.send_response_headers(200, content_type="text/event-stream")
        assert not reply.HasField("mode_override")  # the stream is followed ...
        await stream.write(ProcessingRequest(response_body=HttpBody(body=first, end_of_stream=False)))
        assert (await stream.call.read()).HasField("response_body")
        assert await stream.call.read() is grpc.aio.EOF  # ... to its first chunk only
    assert sample(telemetry, "epp_answer_checks_total", {"model": GEMMA}) == 1
