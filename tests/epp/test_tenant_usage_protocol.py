"""Behind a front door with API keys the EPP counts each response's tokens for the tenant it names."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody, ProcessingRequest
from epp.extproc.picker import EndpointPicker
from epp.telemetry import Telemetry

from tests.epp.extproc_support import EnvoyStream, LeastBusyScheduler, pool, serving

GEMMA = "google/gemma-2b-it"
TENANT = "x-gateway-api-key-name"
USAGE = b'{"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}'


def completion() -> bytes:
    return json.dumps({"model": GEMMA, "prompt": "hi", "max_tokens": 3}).encode()


def picker() -> tuple[EndpointPicker, Telemetry]:
    datastore = pool(("10.0.0.1", 8000, [GEMMA]))
    telemetry = Telemetry("epp", datastore)
    return EndpointPicker(datastore, LeastBusyScheduler(), telemetry), telemetry


def tenant_tokens(telemetry: Telemetry, name: str, kind: str) -> float | None:
    return telemetry.registry.get_sample_value(
        "epp_api_key_tokens_total", {"api_key_name": name, "model": GEMMA, "kind": kind}
    )


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - polling state owned by the server's tasks
            await asyncio.sleep(0.005)


async def test_a_complete_answer_for_a_tenant_is_read_for_its_usage_in_streamed_mode() -> None:
    servicer, telemetry = picker()
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(completion(), headers={TENANT: "team-a"})
        answer = await stream.send_response_headers(200)
        assert answer.mode_override.response_body_mode == ProcessingMode.BUFFERED_PARTIAL
        await stream.write(ProcessingRequest(response_body=HttpBody(body=USAGE, end_of_stream=True)))
        assert (await stream.call.read()).HasField("response_body")

    await eventually(lambda: tenant_tokens(telemetry, "team-a", "completion") == 3)
    assert tenant_tokens(telemetry, "team-a", "prompt") == 7


async def test_without_a_tenant_a_complete_answer_still_passes_unread() -> None:
    servicer, telemetry = picker()
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(completion())
        answer = await stream.send_response_headers(200)
    assert answer.mode_override.response_body_mode == ProcessingMode.NONE
    assert telemetry.registry.get_sample_value("epp_api_key_tokens_total", {
        "api_key_name": "_none", "model": GEMMA, "kind": "prompt"}) is None


async def test_a_streamed_answers_usage_is_counted_for_its_tenant() -> None:
    servicer, telemetry = picker()
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(completion(), headers={TENANT: "team-b"})
        answer = await stream.send_response_headers(200, content_type="text/event-stream")
        assert not answer.HasField("mode_override")
        for chunk, last in ((b"data: " + USAGE + b"\n\n", False), (b"data: [DONE]\n\n", True)):
            await stream.write(ProcessingRequest(response_body=HttpBody(body=chunk, end_of_stream=last)))
            await stream.call.read()

    await eventually(lambda: tenant_tokens(telemetry, "team-b", "completion") == 3)


async def test_tenant_label_values_stay_bounded_whatever_reaches_the_epp() -> None:
    servicer, telemetry = picker()
    async with serving(servicer) as stub:
        for name in ["team-a", "not a name", "team-a"]:
            stream = EnvoyStream(stub)
            await stream.send_request(completion(), headers={TENANT: name})
            await stream.send_response(200, USAGE)

    await eventually(lambda: tenant_tokens(telemetry, "team-a", "prompt") == 14)
    assert tenant_tokens(telemetry, "_other", "prompt") == 7
