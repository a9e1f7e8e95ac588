"""Answer ends over a real ext_proc stream: an answer that is not streamed leaves the pod's load at
its response headers, flag or not; with --follow-answers-up-to, a short stream is read to its last
event and the pod's load drops then; a long one, and every stream with the flag off, is left at its
response headers with no end recorded, unless the proxy sends every chunk anyway (full duplex, as
on GKE): then its last chunk ends it."""

from __future__ import annotations

import json
import random
import time

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody, ProcessingRequest
from epp.datastore import Datastore
from epp.extproc.picker import EndpointPicker
from epp.scheduling import Scheduler, load_profile
from epp.telemetry import Telemetry

from tests.epp.extproc_support import EnvoyStream, pool, serving

GEMMA = "google/gemma-2b-it"
POD = "10.0.0.1:8000"


def picker(follow_up_to: int) -> tuple[EndpointPicker, Datastore]:
    datastore = pool(("10.0.0.1", 8000, [GEMMA]))
    scheduler = Scheduler.from_config(load_profile("default"), rng=random.Random(1))
    telemetry = Telemetry("epp", datastore)
    servicer = EndpointPicker(datastore, scheduler, telemetry, follow_answers_up_to=follow_up_to)
    return servicer, datastore


def chat_body(*, stream: bool = False, max_tokens: int | None = None) -> bytes:
    """A chat completion of GEMMA's, streamed or not, with ``max_tokens`` when given."""
    request: dict[str, object] = {"model": GEMMA, "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        request["stream"] = True
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    return json.dumps(request).encode()


async def _stream(servicer: EndpointPicker, datastore: Datastore, max_tokens: int) -> tuple[int, int, int]:
    """A streamed chat completion answered in two events: (requests in flight while it streams, in
    flight after its last event, answer ends recorded)."""
    body = chat_body(stream=True, max_tokens=max_tokens)
    endpoint = datastore.get(POD)
    assert endpoint is not None
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(body, path="/v1/chat/completions")
        await stream.send_response_headers(200, content_type="text/event-stream")
        during = endpoint.in_flight
        for last, event in ((False, b'data: {"choices": []}\n\n'), (True, b"data: [DONE]\n\n")):
            await stream.write(ProcessingRequest(response_body=HttpBody(body=event, end_of_stream=last)))
            if during:  # followed: every chunk is answered
                assert (await stream.call.read()).HasField("response_body")
        after = endpoint.in_flight
    return during, after, endpoint.load.ended_since(time.monotonic() - 60)


async def test_a_short_stream_is_followed_to_its_end_and_then_leaves_the_pods_load() -> None:
    servicer, datastore = picker(32)
    assert await _stream(servicer, datastore, max_tokens=16) == (1, 0, 1)


async def test_a_long_stream_and_any_stream_with_the_flag_off_are_left_at_their_headers() -> None:
    servicer, datastore = picker(32)
    assert await _stream(servicer, datastore, max_tokens=500) == (0, 0, 0)
    servicer, datastore = picker(0)
    assert await _stream(servicer, datastore, max_tokens=16) == (0, 0, 0)


async def test_where_the_proxy_sends_every_chunk_a_streams_end_leaves_the_pods_load_flag_or_not() -> None:
    """GKE's gateway passes every response chunk through the EPP (full duplex): the end is seen there
    at no extra cost, so it counts, whether or not the EPP would have followed the stream."""
    for follow_up_to in (0, 32):
        servicer, datastore = picker(follow_up_to)
        endpoint = datastore.get(POD)
        assert endpoint is not None
        body = chat_body(stream=True, max_tokens=500)
        async with serving(servicer) as stub:
            stream = EnvoyStream(stub)  # full duplex both ways
            await stream.send_request(body, path="/v1/chat/completions")
            await stream.send_response_headers(200, content_type="text/event-stream")
            assert (endpoint.in_flight, endpoint.load.ended_since(0.0)) == (1, 0)
            await stream.write(ProcessingRequest(response_body=HttpBody(body=b'data: {"choices": []}\n\n')))
            await stream.call.read()
            assert endpoint.load.ended_since(0.0) == 0  # still streaming
            await stream.write(ProcessingRequest(response_body=HttpBody(body=b"data: [DONE]\n\n",
                                                                        end_of_stream=True)))
            await stream.call.read()
            await stream.expect_end()
        assert (endpoint.in_flight, endpoint.load.ended_since(0.0)) == (0, 1), follow_up_to


async def test_a_stream_cut_short_records_no_end_even_where_every_chunk_comes_through() -> None:
    servicer, datastore = picker(0)
    endpoint = datastore.get(POD)
    assert endpoint is not None
    body = chat_body(stream=True)
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub)
        await stream.send_request(body, path="/v1/chat/completions")
        await stream.send_response_headers(200, content_type="text/event-stream")
        await stream.write(ProcessingRequest(response_body=HttpBody(body=b'data: {"choices": []}\n\n')))
        await stream.call.read()
        await stream.done_writing()  # the client went away: Envoy closes the stream mid-answer
        await stream.expect_end()
    assert (endpoint.in_flight, endpoint.load.ended_since(0.0)) == (0, 0)


async def test_an_answer_not_streamed_leaves_the_pods_load_at_its_headers_with_the_flag_off() -> None:
    servicer, datastore = picker(0)
    endpoint = datastore.get(POD)
    assert endpoint is not None
    body = chat_body()
    async with serving(servicer) as stub:
        stream = EnvoyStream(stub, response_mode=ProcessingMode.STREAMED)
        await stream.send_request(body, path="/v1/chat/completions")
        assert (endpoint.in_flight, endpoint.load.ended_since(0.0)) == (1, 0)
        await stream.send_response_headers(200)  # the model server sends them with the whole answer
        assert (endpoint.in_flight, endpoint.load.ended_since(0.0)) == (0, 1)
        await stream.expect_end()  # the EPP leaves the exchange there: nothing more to read
