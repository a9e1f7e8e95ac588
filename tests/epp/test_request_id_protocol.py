"""Every request has one id from the front door to the pod and back (``x-request-id``): the client's
own, or one the gateway makes up; refusals and answers carry it back, so SDKs report it."""

from __future__ import annotations

import json
import uuid

from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse
from epp.extproc.bbr import BodyBasedRouter
from epp.extproc.picker import EndpointPicker
from epp.telemetry import Telemetry

from tests.epp.extproc_support import EnvoyStream, LeastBusyScheduler, pool, serving

GEMMA = "google/gemma-2b-it"
NO_ID = {"x-request-id": ""}


def picker() -> EndpointPicker:
    datastore = pool(("10.0.0.1", 8000, [GEMMA]))
    return EndpointPicker(datastore, LeastBusyScheduler(), Telemetry("epp", datastore))


def completion(model: str = GEMMA) -> bytes:
    return json.dumps({"model": model, "prompt": "hi"}).encode()


def response_header(answer: ProcessingResponse, name: str) -> str | None:
    if answer.HasField("immediate_response"):
        options = answer.immediate_response.headers.set_headers
    else:
        options = answer.response_headers.response.header_mutation.set_headers
    values = [o.header.raw_value.decode() for o in options if o.header.key == name]
    return values[0] if values else None


async def test_a_request_without_an_id_gets_one_on_its_way_to_the_pod_and_back() -> None:
    async with serving(picker()) as stub:
        stream = EnvoyStream(stub)
        outcome = await stream.send_request(completion(), headers=NO_ID)
        generated = outcome.set_headers["x-request-id"]
        assert uuid.UUID(generated).version == 4
        assert outcome.set_headers["x-gateway-request-id-generated"] == "1"
        answers = await stream.send_response(200, b"{}")
    assert response_header(answers[0], "x-request-id") == generated


async def test_the_clients_own_id_is_kept_and_not_repeated() -> None:
    async with serving(picker()) as stub:
        stream = EnvoyStream(stub)
        outcome = await stream.send_request(completion(), headers={"x-request-id": "client-7"})
        assert "x-request-id" not in outcome.set_headers  # the request already carries it
        answers = await stream.send_response(200, b"{}")
    assert response_header(answers[0], "x-request-id") is None  # the client knows it


async def test_the_picker_returns_the_id_the_front_door_made_up() -> None:
    async with serving(picker()) as stub:
        stream = EnvoyStream(stub)
        marked = {"x-request-id": "made-at-the-door", "x-gateway-request-id-generated": "1"}
        await stream.send_request(completion(), headers=marked)
        answers = await stream.send_response(200, b"{}")
    assert response_header(answers[0], "x-request-id") == "made-at-the-door"


async def test_a_refusal_carries_a_made_up_id_too() -> None:
    router = BodyBasedRouter(Telemetry("bbr"), served_models=[GEMMA])
    async with serving(router) as stub:
        outcome = await EnvoyStream(stub).send_request(
            completion("no-such-model"), headers={"x-request-id": "r-9"}
        )
        assert outcome.immediate is not None
        assert response_header(outcome.immediate, "x-request-id") is None  # the client's own
        generated = await EnvoyStream(stub).send_request(completion("no-such-model"), headers=NO_ID)
        assert generated.immediate is not None
        assert uuid.UUID(response_header(generated.immediate, "x-request-id") or "").version == 4


async def test_the_front_door_sets_a_made_up_id_on_the_request_it_passes_on() -> None:
    router = BodyBasedRouter(Telemetry("bbr"), served_models=[GEMMA])
    async with serving(router) as stub:
        outcome = await EnvoyStream(stub).send_request(completion(), headers=NO_ID)
    assert uuid.UUID(outcome.set_headers["x-request-id"]).version == 4
