"""bench.floor, the floor of make bench-overhead: the EPP's messages without its work."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse
from epp.extproc import StreamDriver
from epp.extproc.picker import EndpointPicker
from epp.telemetry import Telemetry

from bench.floor import FloorServicer
from tests.epp.extproc_support import EnvoyStream, LeastBusyScheduler, pool

GEMMA = "google/gemma-2b-it"
POD = "10.0.0.1:8000"


@asynccontextmanager
async def serving(servicer: object) -> AsyncIterator[external_processor_pb2_grpc.ExternalProcessorStub]:
    server = grpc.aio.server()
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield external_processor_pb2_grpc.ExternalProcessorStub(channel)
    finally:
        await server.stop(0)


def shape(answer: ProcessingResponse) -> tuple[str | None, bool, bool]:
    """What kind of answer, whether it routes (clears the route cache), whether it overrides a mode."""
    kind = answer.WhichOneof("response")
    routes = kind == "request_headers" and answer.request_headers.response.clear_route_cache
    return kind, routes, answer.HasField("mode_override")


Exchanged = tuple[list[ProcessingResponse], ProcessingResponse, object]


async def exchange(servicer: object, body: bytes) -> Exchanged:
    """One request and its response headers; the request's answers, the response headers' answer and
    what the stream read next (EOF when the processor ended it)."""
    async with serving(servicer) as stub:
        # Responses streamed, as the one box's gateway shows them to the EPP.
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        outcome = await stream.send_request(body)
        answer = await stream.send_response_headers(200)
        after = await stream.call.read()
        await stream.done_writing()
        return outcome.responses, answer, after


def completion(size: int) -> bytes:
    prompt = "x" * size
    return json.dumps({"model": GEMMA, "prompt": prompt, "max_tokens": 8}).encode()


async def test_the_floor_routes_every_request_to_its_destination_and_echoes_the_body() -> None:
    body = completion(200 * 1024)
    answers, response_answer, after = await exchange(FloorServicer(POD), body)
    route = answers[0].request_headers.response
    assert route.clear_route_cache
    assert {o.header.key: o.header.raw_value.decode() for o in route.header_mutation.set_headers} == {
        "x-gateway-destination-endpoint": POD
    }
    lb = answers[0].dynamic_metadata.fields["envoy.lb"].struct_value.fields
    assert lb["x-gateway-destination-endpoint"].string_value == POD
    echoed = b"".join(a.request_body.response.body_mutation.streamed_response.body for a in answers[1:])
    assert echoed == body
    assert response_answer.mode_override.response_body_mode == ProcessingMode.NONE  # body skipped
    assert after is grpc.aio.EOF


async def test_the_floor_sends_the_same_messages_as_the_epp_for_small_and_large_bodies() -> None:
    for size in (1024, 200 * 1024):
        body = completion(size)
        picker = EndpointPicker(pool(("10.0.0.1", 8000, [GEMMA])), LeastBusyScheduler(), Telemetry("epp"))
        epp = StreamDriver(picker)
        epp_answers, epp_response, epp_after = await exchange(epp, body)
        floor_answers, floor_response, floor_after = await exchange(FloorServicer(POD), body)
        assert [shape(a) for a in floor_answers] == [shape(a) for a in epp_answers], size
        assert shape(floor_response) == shape(epp_response)
        assert floor_after is grpc.aio.EOF
        assert epp_after is grpc.aio.EOF
