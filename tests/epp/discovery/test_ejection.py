"""A pod whose scrapes fail or whose connections are refused leaves rotation, and comes back once it
answers again; a flapping pod stays out longer each time."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web
from epp.datastore import Datastore, Endpoint
from epp.discovery import EjectionPolicy, Ejector, MetricsScraper
from pydantic import ValidationError

from .support import eventually, pod_appears, running, serve
from .test_metrics_scraper import FakeVllm, closed_port

GEMMA = "google/gemma-2b-it"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(*names: str) -> tuple[Datastore, list[Endpoint]]:
    datastore = Datastore()
    endpoints = []
    for port, name in enumerate(names, start=8001):
        endpoint = datastore.upsert(Endpoint(name=name, ip="10.0.0.1", port=port))
        datastore.set_models(endpoint.address, frozenset({GEMMA}), {})
        endpoints.append(endpoint)
    return datastore, endpoints


def ejector(datastore: Datastore, clock: Clock, **policy: float) -> Ejector:
    return Ejector(datastore, EjectionPolicy.model_validate(policy), clock=clock)


def routable(datastore: Datastore) -> list[str]:
    return [e.name for e in datastore.view.endpoints]


def test_three_failed_scrapes_in_a_row_take_a_pod_out_of_rotation_but_not_its_model() -> None:
    datastore, (dead, _live) = pool("gemma-0", "gemma-1")
    outliers = ejector(datastore, Clock())
    outliers.scrape_failed(dead, "refused")
    outliers.scrape_failed(dead, "refused")
    assert routable(datastore) == ["gemma-0", "gemma-1"]
    outliers.scrape_failed(dead, "refused")
    assert routable(datastore) == ["gemma-1"]
    assert dead.ejected
    assert outliers.ejections == 1
    assert GEMMA in datastore.view.known_models  # still a known model: a 503 while none is left


def test_a_successful_scrape_between_failures_starts_the_count_over() -> None:
    datastore, (flaky,) = pool("gemma-0")
    outliers = ejector(datastore, Clock())
    for _ in range(5):
        outliers.scrape_failed(flaky, "timeout")
        outliers.scrape_failed(flaky, "timeout")
        outliers.scrape_succeeded(flaky)
    assert routable(datastore) == ["gemma-0"]


def test_a_busy_pod_whose_metrics_come_late_stays_in_rotation_while_it_answers_its_requests() -> None:
    datastore, (busy, hung) = pool("gemma-0", "gemma-1")
    clock = Clock()
    outliers = ejector(datastore, clock)
    for _ in range(3):  # both pods' scrapes time out, three times in a row...
        clock.now += 0.5
        outliers.scrape_failed(busy, "no answer within 0.5 s", timed_out=True)
        outliers.scrape_failed(hung, "no answer within 0.5 s", timed_out=True)
        clock.now += 0.05
        outliers.answered(busy.address, alive_at=clock.now)  # ...but one goes on answering its requests
    assert routable(datastore) == ["gemma-0"]
    assert not busy.ejected
    assert hung.ejected
    # Its count started over: three more timeouts with no answer in between take it out.
    for _ in range(3):
        clock.now += 0.5
        outliers.scrape_failed(busy, "no answer within 0.5 s", timed_out=True)
    assert busy.ejected


def test_an_answer_does_not_excuse_scrapes_that_were_refused_or_were_not_metrics() -> None:
    datastore, (pod,) = pool("gemma-0")
    clock = Clock()
    outliers = ejector(datastore, clock)
    for why in ("refused", "HTTP 500", "not vLLM metrics"):
        clock.now += 0.05
        outliers.scrape_failed(pod, why)
        outliers.answered(pod.address, alive_at=clock.now)
    assert pod.ejected


def test_a_run_of_failures_is_excused_only_if_every_one_of_them_timed_out() -> None:
    datastore, (pod,) = pool("gemma-0")
    clock = Clock()
    outliers = ejector(datastore, clock)
    for why, timed_out in (("refused", False), ("refused", False), ("no answer within 0.5 s", True)):
        clock.now += 0.5
        outliers.scrape_failed(pod, why, timed_out=timed_out)
        outliers.answered(pod.address, alive_at=clock.now)
    assert pod.ejected


def test_an_answer_the_pod_sent_before_its_scrapes_began_to_fail_does_not_keep_it_in() -> None:
    datastore, (pod,) = pool("gemma-0")
    clock = Clock()
    outliers = ejector(datastore, clock, base_ejection=1.0)
    for _ in range(3):  # out once and back: its state (and what it answered) is kept from now on
        outliers.scrape_failed(pod, "refused")
    clock.now += 1.5
    outliers.scrape_succeeded(pod)
    assert not pod.ejected
    last_byte = clock.now
    clock.now += 5.0
    for _ in range(3):
        clock.now += 0.5
        outliers.scrape_failed(pod, "no answer within 0.5 s", timed_out=True)
        # A stream it had begun before it hung, ended now by its client: its last byte is old news.
        outliers.answered(pod.address, alive_at=last_byte)
    assert pod.ejected


def test_an_answer_that_proves_nothing_does_not_keep_a_pod_in() -> None:
    datastore, (pod,) = pool("gemma-0")
    clock = Clock()
    outliers = ejector(datastore, clock)
    for _ in range(3):
        clock.now += 0.5
        outliers.scrape_failed(pod, "no answer within 0.5 s", timed_out=True)
        outliers.answered(pod.address)  # the gateway's 504 for it, or a 5xx: no time it was alive
    assert pod.ejected


def test_an_ejected_pod_comes_back_with_its_first_good_scrape_after_its_ejection_time() -> None:
    datastore, (pod,) = pool("gemma-0")
    clock = Clock()
    outliers = ejector(datastore, clock, base_ejection=1.0)
    for _ in range(3):
        outliers.scrape_failed(pod, "refused")
    clock.now += 0.5
    outliers.scrape_succeeded(pod)
    assert routable(datastore) == []  # answering, but its ejection time is not over
    clock.now += 0.6
    assert routable(datastore) == []  # over, but it has not answered since
    outliers.scrape_succeeded(pod)
    assert routable(datastore) == ["gemma-0"]


def test_a_pod_ejected_again_soon_after_coming_back_stays_out_twice_as_long() -> None:
    datastore, (pod,) = pool("gemma-0")
    clock = Clock()
    outliers = ejector(datastore, clock, base_ejection=1.0, max_ejection=3.0, consecutive_failures=1)
    outs = []
    for _ in range(4):
        outliers.scrape_failed(pod, "refused")
        ejected_at = clock.now
        while pod.ejected:
            clock.now += 0.25
            outliers.scrape_succeeded(pod)
        outs.append(clock.now - ejected_at)
    assert outs == [1.0, 2.0, 3.0, 3.0]  # doubled, at most max_ejection
    clock.now += 10.0  # in rotation longer than max_ejection: the backoff starts over
    outliers.scrape_failed(pod, "refused")
    clock.now += 1.0
    outliers.scrape_succeeded(pod)
    assert not pod.ejected


def test_two_refused_connections_in_a_row_eject_a_pod_and_an_answer_between_them_resets_it() -> None:
    datastore, (pod, other) = pool("gemma-0", "gemma-1")
    outliers = ejector(datastore, Clock())
    outliers.connect_failed(pod.address)
    outliers.answered(pod.address)
    outliers.connect_failed(pod.address)
    assert routable(datastore) == ["gemma-0", "gemma-1"]
    outliers.connect_failed(pod.address)
    assert routable(datastore) == ["gemma-1"]
    outliers.connect_failed("10.9.9.9:1")  # not in the pool: ignored
    assert other.ejected is False


def test_a_pod_that_left_the_pool_is_forgotten() -> None:
    datastore, (pod,) = pool("gemma-0")
    outliers = ejector(datastore, Clock(), consecutive_failures=2)
    outliers.scrape_failed(pod, "refused")
    datastore.remove(pod.address)
    back = datastore.upsert(Endpoint(name="gemma-0", ip="10.0.0.1", port=8001))
    outliers.scrape_failed(back, "refused")
    assert not back.ejected


def test_an_ejection_policy_whose_shortest_ejection_exceeds_its_longest_is_refused() -> None:
    with pytest.raises(ValidationError, match="base_ejection must not exceed max_ejection"):
        EjectionPolicy(base_ejection=60, max_ejection=30)


async def test_the_scraper_ejects_a_pod_that_refuses_connections_and_readmits_it_once_it_answers() -> None:
    datastore = Datastore()
    outliers = Ejector(datastore, EjectionPolicy(base_ejection=0.05))
    scraper = MetricsScraper(datastore, interval=0.01, timeout=0.5, ejector=outliers)
    async with running(scraper):
        port = closed_port()
        pod = await pod_appears(datastore, port)
        datastore.set_models(pod.address, frozenset({GEMMA}), {})
        await eventually(lambda: pod.ejected, what="the ejection")
        assert datastore.view.endpoints == ()
        assert scraper.errors >= 3
        runner = web.AppRunner(FakeVllm().app())
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            await eventually(lambda: not pod.ejected, what="the readmission")
        finally:
            await runner.cleanup()
        assert datastore.view.endpoints == (pod,)


async def test_the_scraper_keeps_a_pod_that_answers_requests_but_not_its_scrapes_in_time() -> None:
    async def late(request: web.Request) -> web.Response:
        await asyncio.sleep(10)  # past every scrape's timeout
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/metrics", late)
    datastore = Datastore()
    outliers = Ejector(datastore, EjectionPolicy())
    scraper = MetricsScraper(datastore, interval=0.01, timeout=0.05, ejector=outliers)
    async with serve(app) as port, running(scraper):
        pod = await pod_appears(datastore, port)
        datastore.set_models(pod.address, frozenset({GEMMA}), {})
        failed_before = scraper.errors
        while scraper.errors < failed_before + 9:  # three ejections' worth of timed-out scrapes
            outliers.answered(pod.address, alive_at=time.monotonic())  # its requests are answered
            await asyncio.sleep(0.01)
        assert not pod.ejected
        await eventually(lambda: pod.ejected, what="the ejection once it answers nothing either")
