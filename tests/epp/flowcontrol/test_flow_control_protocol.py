"""The flow-control queue behind the EPP's ext_proc stream: a saturated model's request is held, not
refused, and routed once its pod has room; what cannot wait gets OpenAI-style 429/503 JSON with
Retry-After; the tenant comes from the front door's header, the priority from the objective."""

from __future__ import annotations

import asyncio
import json
import time

from epp.datastore import Metrics
from epp.extproc.picker import EndpointPicker
from epp.flowcontrol.config import FlowControlConfig
from epp.flowcontrol.queue import FlowController
from epp.requestcontrol.flow_control import FlowControlAdmission, fairness_id
from epp.scheduling.saturation import SaturationDetector
from epp.telemetry import Telemetry

from tests.epp.extproc_support import EnvoyStream, LeastBusyScheduler, pool, serving

GEMMA = "google/gemma-2b-it"
ADDRESS = "10.0.0.1:8000"


def body() -> bytes:
    return json.dumps({"model": GEMMA, "prompt": "hi"}).encode()


def queued_picker(waiting: int, **config: object) -> tuple[EndpointPicker, FlowController]:
    datastore = pool(("10.0.0.1", 8000, [GEMMA]), pool_models=[GEMMA, "scaled/to-zero"])
    endpoint = datastore.get(ADDRESS)
    assert endpoint is not None
    datastore.set_metrics(endpoint, Metrics(waiting=waiting, updated_at=1e12))  # fresh for ever
    detector = SaturationDetector(queue_depth_threshold=0, metrics_staleness_threshold=1e13)
    queue = FlowController(FlowControlConfig.model_validate(config), datastore, detector, tick=0.01)
    admission = FlowControlAdmission(queue, {"chat": 5})
    picker = EndpointPicker(datastore, LeastBusyScheduler(), Telemetry("epp", datastore),
                            plugins=admission.plugins())
    return picker, queue


async def test_a_request_for_a_saturated_model_is_held_and_routed_once_its_pod_has_room() -> None:
    picker, queue = queued_picker(waiting=2)
    async with serving(picker) as stub:
        sent = asyncio.ensure_future(EnvoyStream(stub).send_request(body()))
        for _ in range(100):
            if queue.count:
                break
            await asyncio.sleep(0.01)
        assert queue.count == 1
        assert not sent.done()
        endpoint = picker._datastore.get(ADDRESS)
        assert endpoint is not None
        picker._datastore.set_metrics(endpoint, Metrics(waiting=0, updated_at=2e12))
        outcome = await asyncio.wait_for(sent, 5)
    assert outcome.immediate is None
    assert outcome.set_headers["x-gateway-destination-endpoint"] == ADDRESS
    await queue.close()


async def test_what_cannot_wait_gets_openai_json_with_retry_after() -> None:
    picker, queue = queued_picker(waiting=2, defaultRequestTTL="0.2s", noEndpointRequestTTL="0.2s")
    async with serving(picker) as stub:
        saturated = await EnvoyStream(stub).send_request(body())
        cold = await EnvoyStream(stub).send_request(json.dumps({"model": "scaled/to-zero"}).encode())
    expected = ((saturated, 429, "rate_limit_exceeded"), (cold, 503, "service_unavailable"))
    for outcome, status, kind in expected:
        code, document = outcome.error()
        assert code == status
        assert document["error"]["type"] == kind  # type: ignore[index]
        assert outcome.immediate is not None
        headers = {o.header.key for o in outcome.immediate.immediate_response.headers.set_headers}
        assert "retry-after" in headers
    await queue.close()


def test_the_tenant_is_the_front_doors_then_the_clients_fairness_header_then_shared() -> None:
    front_door = {"x-gateway-api-key-name": "team-a", "x-llm-d-inference-fairness-id": "me"}
    assert fairness_id(front_door) == "team-a"
    assert fairness_id({"x-gateway-inference-fairness-id": "batch"}) == "batch"
    assert fairness_id({}) == "default"


def test_the_priority_is_the_front_doors_then_the_objectives() -> None:
    admission = FlowControlAdmission(None, {"chat": 5, "batch": -1})  # type: ignore[arg-type]
    assert admission.priority({"x-llm-d-inference-objective": "chat"}) == 5
    assert admission.priority({"x-gateway-inference-objective": "batch"}) == -1
    assert admission.priority({"x-llm-d-inference-objective": "unknown"}) == 0
    # The front door's priority header counts only with its tenant header (a client cannot set both
    # through a front door, which strips them).
    assert admission.priority({"x-gateway-api-key-priority": "9"}) == 0
    assert admission.priority({"x-gateway-api-key-priority": "9", "x-gateway-api-key-name": "a"}) == 9


async def test_the_end_of_an_answer_lets_the_next_held_request_go_without_waiting_for_a_scrape() -> None:
    picker, queue = queued_picker(waiting=0)
    datastore = picker._datastore
    endpoint = datastore.get(ADDRESS)
    assert endpoint is not None
    # Two scrapes with a request waiting behind one running: the pod runs one at a time.
    for _ in range(2):
        datastore.set_metrics(endpoint, Metrics(running=1, waiting=1, updated_at=time.monotonic()))
        queue.free(GEMMA, None)
    assert queue.slots(ADDRESS) == 1
    datastore.set_metrics(endpoint, Metrics(running=0, waiting=0, updated_at=time.monotonic()))
    async with serving(picker) as stub:
        first = EnvoyStream(stub)
        routed = await first.send_request(body(), headers={"x-request-id": "first"})
        assert routed.set_headers["x-gateway-destination-endpoint"] == ADDRESS
        # The pod's one slot is taken (no scrape shows it yet): the next request is held.
        held = EnvoyStream(stub).send_request(body(), headers={"x-request-id": "second"})
        second = asyncio.ensure_future(held)
        for _ in range(100):
            if queue.count:
                break
            await asyncio.sleep(0.01)
        assert queue.count == 1
        # The first answer ends: its slot is free at once, with no new scrape.
        await first.send_response(200, b'{"choices": []}')
        outcome = await asyncio.wait_for(second, 5)
    assert outcome.set_headers["x-gateway-destination-endpoint"] == ADDRESS
    await queue.close()
