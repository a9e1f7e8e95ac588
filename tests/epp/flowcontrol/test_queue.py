"""The flow-control queue: requests wait while their model's pods are saturated, leave fairly across
tenants and by priority as the pods get room, and never wait without bound."""

from __future__ import annotations

import asyncio
import math

import pytest
from epp.datastore import SEND_SHOWS_AFTER, Datastore, Endpoint, Metrics
from epp.flowcontrol.config import FlowControlConfig
from epp.flowcontrol.metrics import FlowControlMetrics
from epp.flowcontrol.queue import ACTIVE_SECONDS, FlowController
from epp.refusals import RequestError
from epp.scheduling.saturation import SaturationDetector
from prometheus_client import CollectorRegistry

MODEL = "m"
A = "10.0.0.1:8000"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool(clock: Clock, *addresses: str, model: str = MODEL) -> Datastore:
    datastore = Datastore(pool_models=[model])
    for address in addresses:
        ip, port = address.split(":")
        endpoint = datastore.upsert(Endpoint(name=address, ip=ip, port=int(port)))
        datastore.set_models(endpoint.address, frozenset({model}), {})
    datastore.mark_synced()
    return datastore


def load(datastore: Datastore, clock: Clock, address: str, waiting: int, running: int = 4) -> None:
    """A fresh scrape of ``address`` showing ``waiting`` queued and ``running`` running requests."""
    endpoint = datastore.get(address)
    assert endpoint is not None
    datastore.set_metrics(endpoint, Metrics(waiting=waiting, running=running, updated_at=clock.now))


def scrapes(queue: FlowController, datastore: Datastore, clock: Clock, address: str,
            *loads: tuple[int, int]) -> None:
    """Successive scrapes of ``address``, 50 ms apart, each (running, waiting), each looked at by the
    queue (as it does at every request, and every tick while requests wait)."""
    for running, waiting in loads:
        clock.now += 0.05
        load(datastore, clock, address, waiting, running)
        queue.free(MODEL, None)


def controller(datastore: Datastore, clock: Clock, registry: CollectorRegistry | None = None,
               **config: object) -> FlowController:
    metrics = FlowControlMetrics(registry, "pool") if registry is not None else None
    # queueDepthThreshold 0: an endpoint has room only while nothing waits at it.
    detector = SaturationDetector(queue_depth_threshold=0, metrics_staleness_threshold=1.0)
    return FlowController(FlowControlConfig.model_validate(config), datastore, detector, metrics,
                          clock=clock, tick=3600)


def waiting(queue: FlowController, tenant: str, priority: int = 0, model: str = MODEL) -> asyncio.Task[None]:
    return asyncio.ensure_future(queue.admit(model, None, tenant, priority, 100))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_request_with_room_and_nobody_ahead_does_not_wait() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    load(datastore, clock, A, waiting=0)
    queue = controller(datastore, clock)
    await asyncio.wait_for(queue.admit(MODEL, None, "t", 0, 10), 1)
    assert queue.count == 0


async def test_a_saturated_model_makes_requests_wait_until_a_pod_has_room() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    load(datastore, clock, A, waiting=3)
    queue = controller(datastore, clock)
    task = waiting(queue, "t")
    await settle()
    assert not task.done()
    assert queue.count == 1
    clock.now += 0.05
    load(datastore, clock, A, waiting=0)
    assert queue.dispatch() == 1
    await asyncio.wait_for(task, 1)
    assert queue.count == 0
    await queue.close()


async def test_requests_sent_since_the_last_scrape_count_against_a_pods_room() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    load(datastore, clock, A, waiting=3)
    queue = controller(datastore, clock)
    tasks = [waiting(queue, "t") for _ in range(3)]
    await settle()
    clock.now += 0.01
    load(datastore, clock, A, waiting=0)
    assert queue.dispatch() == 1  # one goes; the scrape cannot show it yet
    await settle()
    clock.now += 0.001
    datastore.acquire(A, clock.now)  # it is routed there
    assert queue.dispatch() == 0
    clock.now += 0.01
    load(datastore, clock, A, waiting=0)  # a scrape just after the send may not show it yet
    assert queue.dispatch() == 0
    clock.now += SEND_SHOWS_AFTER
    load(datastore, clock, A, waiting=0)  # a later one does: it is running, room again
    assert queue.dispatch() == 1
    await queue.close()
    for task in tasks:
        task.cancel()


async def test_tenants_are_served_in_turn_not_in_arrival_order() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    load(datastore, clock, A, waiting=5)
    queue = controller(datastore, clock)
    order: list[str] = []

    async def request(tenant: str) -> None:
        await queue.admit(MODEL, None, tenant, 0, 100)
        order.append(tenant)

    heavy = [asyncio.ensure_future(request("heavy")) for _ in range(10)]
    await settle()
    light = [asyncio.ensure_future(request("light")) for _ in range(2)]
    await settle()
    for _ in range(5):
        clock.now += 0.01
        load(datastore, clock, A, waiting=0)
        queue.dispatch()
        await settle()
    # A tenant new to the queue goes first: it waited for none of the heavy tenant's turns.
    assert order == ["light", "heavy", "light", "heavy", "heavy"]
    await queue.close()
    for task in [*heavy, *light]:
        task.cancel()


async def test_a_higher_priority_goes_first_and_sheds_a_lower_one_from_a_full_band() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    load(datastore, clock, A, waiting=5)
    queue = controller(datastore, clock, maxRequests=2)
    low_old = waiting(queue, "batch", priority=-1)
    await settle()
    low_new = waiting(queue, "batch", priority=-1)
    await settle()
    high = waiting(queue, "chat", priority=10)
    await settle()
    # The queue was full: the newest low-priority request made room, with a 429.
    with pytest.raises(RequestError) as shed:
        await asyncio.wait_for(low_new, 1)
    assert (shed.value.status, shed.value.reason) == (429, "shed")
    clock.now += 0.01
    load(datastore, clock, A, waiting=0)
    assert queue.dispatch() == 1
    await asyncio.wait_for(high, 1)
    datastore.acquire(A, clock.now)  # routed there
    assert not low_old.done()
    # Nothing lower to shed: a full queue refuses the newcomer itself.
    other = waiting(queue, "chat", priority=-1)
    blocker = waiting(queue, "chat", priority=-1)
    await settle()
    with pytest.raises(RequestError) as refused:
        await asyncio.wait_for(blocker, 1)
    refusal = refused.value
    assert (refusal.status, refusal.reason, refusal.retry_after) == (429, "queue_full", 1)
    await queue.close()
    for task in (low_old, other):
        task.cancel()


async def test_a_request_that_waits_too_long_gets_a_429_with_retry_after() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    load(datastore, clock, A, waiting=5)
    queue = controller(datastore, clock, defaultRequestTTL="2s")
    task = waiting(queue, "t")
    await settle()
    clock.now += 1.9
    queue.dispatch()
    assert not task.done()
    clock.now += 0.2
    queue.dispatch()
    with pytest.raises(RequestError) as expired:
        await asyncio.wait_for(task, 1)
    refusal = expired.value
    assert (refusal.status, refusal.reason, refusal.retry_after) == (429, "queue_timeout", 1)
    assert queue.count == 0


async def test_a_model_with_no_pod_waits_for_one_and_gets_a_503_if_none_comes() -> None:
    clock = Clock()
    datastore = pool(clock)  # configured for MODEL, no pod yet: scaled to zero
    queue = controller(datastore, clock, noEndpointRequestTTL="30s", defaultRequestTTL="1s")
    woken = waiting(queue, "t")
    await settle()
    clock.now += 20  # longer than defaultRequestTTL: the no-endpoint budget applies
    queue.dispatch()
    assert not woken.done()
    endpoint = datastore.upsert(Endpoint(name="cold", ip="10.0.0.9", port=8000))
    datastore.set_models(endpoint.address, frozenset({MODEL}), {})
    load(datastore, clock, endpoint.address, waiting=0)
    queue.dispatch()
    await asyncio.wait_for(woken, 1)

    datastore.remove(endpoint.address)
    never = waiting(queue, "t")
    await settle()
    clock.now += 31
    queue.dispatch()
    with pytest.raises(RequestError) as unavailable:
        await asyncio.wait_for(never, 1)
    assert (unavailable.value.status, unavailable.value.reason) == (503, "no_endpoint")
    assert unavailable.value.retry_after is not None
    await queue.close()


async def test_a_client_that_goes_away_leaves_the_queue_at_once() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    load(datastore, clock, A, waiting=5)
    registry = CollectorRegistry()
    queue = controller(datastore, clock, registry)
    task = waiting(queue, "t")
    await settle()
    assert registry.get_sample_value(
        "llm_d_epp_flow_control_queue_size",
        {"fairness_id": "t", "priority": "0", "inference_pool": "pool", "model_name": MODEL,
         "target_model_name": MODEL},
    ) == 1
    task.cancel()
    await settle()
    assert queue.count == 0
    labels = {"fairness_id": "t", "priority": "0", "inference_pool": "pool", "model_name": MODEL,
              "target_model_name": MODEL}
    for prefix in ("llm_d_epp", "inference_extension"):
        assert registry.get_sample_value(f"{prefix}_flow_control_queue_size", labels) == 0
        count = registry.get_sample_value(
            f"{prefix}_flow_control_request_queue_duration_seconds_count", {**labels, "outcome": "cancelled"}
        )
        assert count == 1
    await queue.close()


def test_the_config_takes_upstreams_fields_and_refuses_what_it_cannot_honour() -> None:
    config = FlowControlConfig.model_validate({
        "maxRequests": "1k", "maxBytes": "1Gi", "defaultRequestTTL": "1m30s", "noEndpointRequestTTL": "0s",
        "priorityBands": [
            {"priority": 10, "maxRequests": 100, "fairnessPolicyRef": "global-strict-fairness-policy"}
        ],
    })
    assert (config.max_requests, config.max_bytes) == (1000, 1 << 30)
    assert config.default_request_ttl == 90.0
    assert config.no_endpoint_request_ttl == math.inf
    assert config.band(10).request_limit == 100
    assert config.band(3).request_limit == 5000
    for bad in ({"priorityBands": [{"priority": "high"}]}, {"defaultRequestTTL": "soon"},
                {"maxRequests": -1}, {"priorityBands": [{"priority": 1}, {"priority": 1}]},
                {"priorityBands": [{"priority": 1, "fairnessPolicyRef": "lottery"}]}, {"queueDepth": 3}):
        with pytest.raises(ValueError, match="validation error"):
            FlowControlConfig.model_validate(bad)


async def test_a_pod_whose_slots_are_all_busy_gets_no_request_though_nothing_waits_there() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    queue = controller(datastore, clock)
    # Requests waited at the pod across two scrapes with 4 running: it runs 4 at a time.
    scrapes(queue, datastore, clock, A, (4, 2), (4, 1))
    assert queue.slots(A) == 4
    # Its queue has drained but its 4 slots are busy: a request sent now would wait in the pod's
    # own FIFO queue, behind whatever comes next; it waits in the EPP instead, where turns are fair.
    scrapes(queue, datastore, clock, A, (4, 0))
    assert queue.must_wait(MODEL, None)
    # Two slots free: room for two, not one.
    scrapes(queue, datastore, clock, A, (2, 0))
    assert queue.free(MODEL, None) == {A: 2}


async def test_one_scrape_with_requests_waiting_does_not_teach_the_slots() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    queue = controller(datastore, clock)
    scrapes(queue, datastore, clock, A, (3, 1), (4, 0), (2, 1), (2, 0))
    assert queue.slots(A) == 0  # never the same running twice in a row with requests waiting
    assert queue.free(MODEL, None) == {A: 1}  # until then: room while nothing waits there


async def test_an_answer_that_ends_frees_its_slot_at_once_not_at_the_next_scrape() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    queue = controller(datastore, clock)  # its dispatcher never ticks on its own in this test
    scrapes(queue, datastore, clock, A, (4, 1), (4, 1), (4, 0))
    task = waiting(queue, "light")
    await settle()
    assert queue.count == 1
    clock.now += 0.01
    queue.ended(A)  # the EPP saw the last byte of an answer from A
    await asyncio.wait_for(task, 1)
    assert task.result() == frozenset({A})
    assert queue.count == 0
    # That slot is taken again (counted as taken until its request is routed, then as sent).
    datastore.acquire(A, clock.now)
    assert queue.must_wait(MODEL, None)
    # An end the scrape already shows is not counted twice.
    scrapes(queue, datastore, clock, A, (4, 0))
    assert queue.must_wait(MODEL, None)
    await queue.close()


async def test_a_request_let_go_holds_its_slot_until_it_is_routed() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    queue = controller(datastore, clock)
    scrapes(queue, datastore, clock, A, (4, 1), (4, 1), (4, 0))  # 4 slots, all busy
    first, second = waiting(queue, "heavy"), waiting(queue, "heavy")
    await settle()
    clock.now += 0.01
    queue.ended(A)  # one slot frees: the first goes
    assert queue.count == 1
    # The dispatcher looks again before the first has been routed (its send is not logged yet):
    # its slot still counts as taken, so the second stays.
    assert queue.dispatch() == 0
    await settle()
    assert first.done()
    assert not second.done()
    datastore.acquire(A, clock.now)  # routed: its send counts from now on
    assert queue.dispatch() == 0
    queue.ended(A)
    await settle()
    assert second.done()
    await queue.close()


async def test_the_last_free_slot_is_kept_for_a_tenant_under_its_share_while_another_is_active() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    queue = controller(datastore, clock)
    scrapes(queue, datastore, clock, A, (4, 1), (4, 1))  # 4 slots
    for _ in range(3):
        queue.started("heavy", MODEL)  # the heavy tenant holds 3 of them
    queue.started("light", MODEL)
    queue.finished("light", MODEL)  # the light tenant's last answer just ended
    scrapes(queue, datastore, clock, A, (3, 0))  # one slot free
    # Two tenants active: a share is 2 slots. The heavy one, above it, leaves the last slot free...
    assert queue.must_wait(MODEL, None, "heavy")
    # ...so the light tenant's next request finds it at once.
    assert queue.free(MODEL, None, "light") == {A: 1}
    # Alone for a while, the heavy tenant takes every slot.
    clock.now += ACTIVE_SECONDS
    scrapes(queue, datastore, clock, A, (3, 0))
    assert queue.free(MODEL, None, "heavy") == {A: 1}


async def test_a_tenant_new_to_the_queue_takes_a_freed_slot_before_a_tenant_that_holds_many() -> None:
    clock = Clock()
    datastore = pool(clock, A)
    queue = controller(datastore, clock)
    scrapes(queue, datastore, clock, A, (4, 1), (4, 1), (4, 0))  # 4 slots, all busy
    for _ in range(4):
        queue.started("heavy", MODEL)
    heavy = waiting(queue, "heavy")
    await settle()
    light = waiting(queue, "light")
    await settle()
    clock.now += 0.01
    queue.ended(A)  # one slot frees: the light tenant, holding none, goes first
    queue.finished("heavy", MODEL)
    await settle()
    assert light.done()
    assert not heavy.done()
    await queue.close()
    heavy.cancel()
