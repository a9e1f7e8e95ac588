"""A key holder must not make the BBR buffer a body before the cheap checks (issue 20, item 1), over
a real gRPC channel: the key and its rate limit are decided on the request headers, a model the key
may not use is refused as soon as the body's ``model`` field has arrived, and refusals count.

These are the attacks of item 1, written ahead of the ext_proc stream driver that fixes them (each
failed on the main before it). ``test_front_door_memory_protocol`` holds the budget's.
"""

from __future__ import annotations

import asyncio
import json

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
    ProtocolConfiguration,
)

from tests.epp.extproc_support import EnvoyStream, header_map, serving
from tests.epp.test_bbr_keys_protocol import GEMMA, KEY_A, PHI, Clock, closed_front_door, completion


async def first_answer(stub: object, headers: dict[str, str], chunks: list[bytes]) -> ProcessingResponse:
    """Send the request headers and ``chunks`` of a body that never ends; the processor's first
    answer, which must come within 2 s."""
    call = stub.Process()  # type: ignore[attr-defined]
    everything = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json",
                  "content-length": "15000000", **headers}  # fmt: skip
    await call.write(ProcessingRequest(
        request_headers=HttpHeaders(headers=header_map(everything), end_of_stream=False),
        protocol_config=ProtocolConfiguration(
            request_body_mode=ProcessingMode.FULL_DUPLEX_STREAMED, response_body_mode=ProcessingMode.NONE
        ),
    ))  # fmt: skip
    for chunk in chunks:
        await call.write(ProcessingRequest(request_body=HttpBody(body=chunk, end_of_stream=False)))
    try:
        async with asyncio.timeout(2):
            answer: ProcessingResponse = await call.read()
    finally:
        call.cancel()
    return answer


async def test_a_key_over_its_limit_is_refused_on_its_headers_before_any_body_byte() -> None:
    async with serving(closed_front_door(clock=Clock())) as stub:
        a = {"x-api-key": KEY_A}
        for _ in range(2):  # team-a's limit: 2 per window
            assert (await EnvoyStream(stub).send_request(completion(GEMMA), headers=a)).immediate is None
        answer = await first_answer(stub, {"x-api-key": KEY_A}, [])
    assert answer.immediate_response.status.code == 429


async def test_a_model_the_key_may_not_use_is_refused_once_the_model_field_has_arrived() -> None:
    start = json.dumps({"model": PHI, "prompt": ""})[:-2].encode()  # '{"model": "...", "prompt": '
    async with serving(closed_front_door()) as stub:
        answer = await first_answer(stub, {"x-api-key": KEY_A}, [start, b'"' + b"x" * 65_536])
    assert answer.immediate_response.status.code == 404


async def test_refused_requests_count_against_the_key() -> None:
    # A separate, larger budget for refusals is fine: after 200 refusals of a key allowed 2 requests
    # per window, the next refusal is a 429, not another free 404.
    async with serving(closed_front_door(clock=Clock())) as stub:
        a = {"x-api-key": KEY_A}
        answers = [await EnvoyStream(stub).send_request(completion(PHI), headers=a) for _ in range(200)]
    assert answers[-1].error()[0] == 429
