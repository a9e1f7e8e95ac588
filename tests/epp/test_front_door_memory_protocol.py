"""A key holder cannot make the front door hold memory for free (issue 20 item 1): the key and its
rate are decided on the headers, before any body byte is kept; a model the front door will not route
is refused as soon as the body names it, not after its last byte; and all streams together hold at
most a budget of body bytes, beyond which a new body gets a 503 with Retry-After."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
    ProtocolConfiguration,
)
from epp.auth.check import KeyCheck
from epp.auth.keys import parse_api_keys
from epp.auth.store import KeyStore
from epp.extproc import ExtProcServer, StreamDriver
from epp.extproc.bbr import BodyBasedRouter
from epp.extproc.stream import CHUNK_ROOM, BodyBudget, buffered_budget
from epp.health import Health
from epp.telemetry import Telemetry

from tests.epp.extproc_support import EnvoyStream, header_map, serving

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"
KEY_A = "sk-team-a-0123456789abcdefghijklmnop"
KEY_B = "sk-team-b-0123456789abcdefghijklmnop"
KEYS = [
    {"name": "team-a", "key": KEY_A, "models": [GEMMA], "requestsPerMinute": 2},
    {"name": "team-b", "key": KEY_B},
]


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def front_door(clock: Clock | None = None) -> BodyBasedRouter:
    store = KeyStore(parse_api_keys(KEYS), window=60.0)
    return BodyBasedRouter(Telemetry("bbr"), served_models=[GEMMA, PHI],
                           keys=KeyCheck(store, clock=clock or Clock()))


def completion(model: str, filler: int = 0) -> bytes:
    return json.dumps({"model": model, "prompt": "x" * filler}).encode()


def padded_first(model: str, filler: int) -> bytes:
    """A body whose ``model`` comes after a long prompt (what the OpenAI SDK sends: messages first)."""
    return json.dumps({"prompt": "x" * filler, "model": model}).encode()


async def open_stream(stub, key: str, size: int | None):  # type: ignore[no-untyped-def]
    """A request's headers (``size``: its content-length; None: none, a chunked upload)."""
    call = stub.Process()
    headers = {":method": "POST", ":path": "/v1/completions", "x-api-key": key, "x-request-id": "r"}
    if size is not None:
        headers["content-length"] = str(size)
    await call.write(ProcessingRequest(
        request_headers=HttpHeaders(headers=header_map(headers), end_of_stream=False),
        protocol_config=ProtocolConfiguration(
            request_body_mode=ProcessingMode.FULL_DUPLEX_STREAMED, response_body_mode=ProcessingMode.NONE
        ),
    ))
    return call


async def answer_of(call) -> ProcessingResponse:  # type: ignore[no-untyped-def]
    """The processor's next answer; a processor still waiting for more body fails the test."""
    async with asyncio.timeout(5):
        answer: ProcessingResponse = await call.read()
    return answer


def status(answer: ProcessingResponse) -> int:
    assert answer.HasField("immediate_response"), answer
    return int(answer.immediate_response.status.code)


async def test_a_key_over_its_rate_is_refused_on_its_headers_before_any_body() -> None:
    async with serving(front_door()) as stub:
        for _ in range(2):
            assert (await EnvoyStream(stub).send_request(completion(GEMMA), headers={"x-api-key": KEY_A})
                    ).immediate is None
        call = await open_stream(stub, KEY_A, 15_000_000)
        answer = await answer_of(call)  # no body byte was sent
        call.cancel()
    assert status(answer) == 429


async def test_refused_requests_count_against_the_keys_rate() -> None:
    async with serving(front_door()) as stub:
        a = {"x-api-key": KEY_A}
        probes = [await EnvoyStream(stub).send_request(completion(m), headers=a) for m in (PHI, "made/up")]
        assert [o.error()[0] for o in probes] != [200, 200]
        then = await EnvoyStream(stub).send_request(completion(GEMMA), headers=a)
    assert then.error()[0] == 429


@pytest.mark.parametrize("model", [PHI, "made/up"], ids=["not-allowed", "unknown"])
async def test_a_model_the_key_may_not_use_is_refused_before_the_last_byte(model: str) -> None:
    body = completion(model, filler=200_000)
    async with serving(front_door()) as stub:
        call = await open_stream(stub, KEY_A, len(body))
        await call.write(ProcessingRequest(request_body=HttpBody(body=body[:60_000], end_of_stream=False)))
        answer = await answer_of(call)
        call.cancel()
    assert status(answer) in (403, 404)


async def test_a_model_named_after_a_long_prompt_is_refused_once_named() -> None:
    body = padded_first(PHI, filler=150_000)
    async with serving(front_door()) as stub:
        call = await open_stream(stub, KEY_A, len(body))
        chunks = [body[i:i + 60_000] for i in range(0, len(body), 60_000)]
        for chunk in chunks[:-1]:
            await call.write(ProcessingRequest(request_body=HttpBody(body=chunk, end_of_stream=False)))
        # The model is in the last chunk: it is seen then, refused with the same answer as always.
        await call.write(ProcessingRequest(request_body=HttpBody(body=chunks[-1], end_of_stream=True)))
        answer = await answer_of(call)
        call.cancel()
    assert status(answer) in (403, 404)


async def test_an_allowed_model_in_many_chunks_is_routed_whole() -> None:
    body = padded_first(GEMMA, filler=150_000)
    async with serving(front_door()) as stub:
        outcome = await EnvoyStream(stub).send_request(
            body, headers={"x-api-key": KEY_B}, chunk_size=10_000
        )
    assert outcome.immediate is None
    assert b"".join(chunk for chunk, _ in outcome.body_chunks) == body


async def until_held(budget: BodyBudget, size: int) -> None:
    """Wait (bounded) until the server's streams hold ``size`` bytes of the budget."""
    async with asyncio.timeout(5):
        while budget.held != size:  # noqa: ASYNC110 - the server's stream tasks take and give back
            await asyncio.sleep(0.01)


async def test_bodies_over_the_budget_get_a_503_with_retry_after_and_the_budget_comes_back() -> None:
    budget = BodyBudget(1_500_000)
    router = front_door()
    server = ExtProcServer(StreamDriver(router, budget), Health(), bind="127.0.0.1", grpc_port=0,
                           health_port=0)
    ports = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
            held = await open_stream(stub, KEY_B, 1_200_000)
            await held.write(ProcessingRequest(request_body=HttpBody(
                body=b'{"prompt": "' + b"x" * 999_988, end_of_stream=False)))
            # What it sent is held, and so is the room for the rest of it (its content-length says
            # 200,000 bytes more), before gRPC is asked for that chunk.
            await until_held(budget, 1_200_000)
            # No room for another body: refused on its headers, before any body byte is taken in.
            second = await open_stream(stub, KEY_B, 600_000)
            refused = await answer_of(second)
            assert status(refused) == 503
            options = refused.immediate_response.headers.set_headers
            headers = {o.header.key: o.header.raw_value for o in options}
            assert headers["retry-after"] == b"1"
            assert budget.held == 1_200_000
            held.cancel()
            # The held stream's bytes and room come back when it ends.
            await until_held(budget, 0)
            fine = await EnvoyStream(stub).send_request(completion(GEMMA), headers={"x-api-key": KEY_B})
            assert fine.immediate is None
    finally:
        await server.stop(0)


async def test_a_body_of_unknown_length_is_given_room_for_a_whole_chunk_before_each_read() -> None:
    budget = BodyBudget(CHUNK_ROOM + 100_000)
    server = ExtProcServer(StreamDriver(front_door(), budget), Health(), bind="127.0.0.1", grpc_port=0,
                           health_port=0)
    ports = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
            chunked = await open_stream(stub, KEY_B, None)  # no content-length: chunked upload
            await until_held(budget, CHUNK_ROOM)
            await chunked.write(ProcessingRequest(request_body=HttpBody(body=b'{"prompt": "xx',
                                                                        end_of_stream=False)))
            await until_held(budget, CHUNK_ROOM + 14)
            # A small body whose content-length fits the room left still gets in.
            small = completion(GEMMA)
            assert len(small) < 100_000 - 14
            fine = await EnvoyStream(stub).send_request(small, headers={"x-api-key": KEY_B})
            assert fine.immediate is None
            # One that does not is refused on its headers.
            refused = await answer_of(await open_stream(stub, KEY_B, 100_000))
            assert status(refused) == 503
            chunked.cancel()
            await until_held(budget, 0)
    finally:
        await server.stop(0)


def test_the_budget_defaults_to_half_the_containers_memory_limit(tmp_path: Path) -> None:
    limit = tmp_path / "memory.max"
    limit.write_text("2147483648\n")
    assert buffered_budget(None, str(limit)) == 1 << 30
    limit.write_text("max\n")
    assert buffered_budget(None, str(limit)) == 1 << 30
    assert buffered_budget(None, str(tmp_path / "absent")) == 1 << 30
    limit.write_text("536870912\n")
    assert buffered_budget(None, str(limit)) == 256 << 20
    assert buffered_budget(12345, str(limit)) == 12345
