"""The picker learning from cached tokens over a real ext_proc stream: the answer to a predicted
prefix-cache hit is read and settles the prediction; an answer to a first sight passes unread."""

from __future__ import annotations

import json
import random

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody, ProcessingRequest
from epp.extproc.picker import EndpointPicker
from epp.requestcontrol.cached_tokens import CachedTokensFeedback
from epp.scheduling import Scheduler, load_profile
from epp.telemetry import Telemetry

from tests.epp.extproc_support import EnvoyStream, pool, serving
from tests.epp.test_tenant_usage_protocol import eventually

GEMMA = "google/gemma-2b-it"
SYSTEM = "You are the support assistant of a bicycle shop. Answer briefly. " * 8


def picker() -> tuple[EndpointPicker, Telemetry]:
    datastore = pool(("10.0.0.1", 8000, [GEMMA]))
    telemetry = Telemetry("epp", datastore)
    scheduler = Scheduler.from_config(load_profile("default"), rng=random.Random(1))
    assert scheduler.learn_from_cached_tokens()
    feedback = CachedTokensFeedback(1.0, telemetry)
    return EndpointPicker(datastore, scheduler, telemetry, cached_tokens=feedback), telemetry


def answer(cached: int) -> bytes:
    usage = {"prompt_tokens": 130, "completion_tokens": 1, "total_tokens": 131,
             "prompt_tokens_details": {"cached_tokens": cached}}
    return json.dumps({"model": GEMMA, "choices": [], "usage": usage}).encode()


async def _exchange(servicer: EndpointPicker, cached: int) -> bool:
    """One request for the support prompt; whether its answer was read."""
    body = json.dumps({"model": GEMMA, "messages": [{"role": "user", "content": SYSTEM}]}).encode()
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(body)
        reply = await stream.send_response_headers(200)
        read = reply.mode_override.response_body_mode == ProcessingMode.BUFFERED_PARTIAL
        if read:
            last = HttpBody(body=answer(cached), end_of_stream=True)
            await stream.write(ProcessingRequest(response_body=last))
            assert (await stream.call.read()).HasField("response_body")
        return read


async def test_only_answers_to_predicted_hits_are_read_and_a_miss_is_counted_stale() -> None:
    servicer, telemetry = picker()
    assert not await _exchange(servicer, 0)  # first sight: nothing predicted, the answer passes unread
    assert await _exchange(servicer, 128)  # predicted hit, confirmed

    def count(outcome: str) -> float | None:
        return telemetry.registry.get_sample_value("epp_cached_tokens_feedback_total", {"outcome": outcome})

    await eventually(lambda: count("confirmed") == 1)
    assert await _exchange(servicer, 0)  # predicted hit, the pod had nothing: stale
    await eventually(lambda: count("stale") == 1)
