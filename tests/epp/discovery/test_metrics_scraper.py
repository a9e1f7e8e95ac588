"""The metrics scraper keeps every endpoint's load fresh, and lets it go stale when scrapes fail."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from aiohttp import web
from epp.datastore import SEND_SHOWS_AFTER, Datastore, Endpoint
from epp.discovery import MetricsScraper

from .support import eventually, one_route_app, pod_appears, running, serve

PAGE = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="google/gemma-2b-it"}} {waiting}
vllm:num_requests_running{{engine="0",model_name="google/gemma-2b-it"}} {running}
vllm:kv_cache_usage_perc{{engine="0",model_name="google/gemma-2b-it"}} {kv}
"""


def closed_port() -> int:
    """A port nothing listens on: bound for a moment, then released (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class FakeVllm:
    waiting: int = 0
    running: int = 0
    kv: float = 0.0
    status: int = 200
    calls: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        body = PAGE.format(waiting=self.waiting, running=self.running, kv=self.kv)
        return web.Response(text=body, content_type="text/plain")

    def app(self) -> web.Application:
        return one_route_app("/metrics", self.handle)


@asynccontextmanager
async def scraping(datastore: Datastore, interval: float = 0.02) -> AsyncIterator[MetricsScraper]:
    scraper = MetricsScraper(datastore, interval=interval, timeout=1.0)
    async with running(scraper):
        yield scraper


async def test_every_endpoint_is_scraped_and_follows_its_load() -> None:
    busy, idle = FakeVllm(waiting=4, running=16, kv=0.8), FakeVllm()
    datastore = Datastore()
    async with serve(busy.app()) as busy_port, serve(idle.app()) as idle_port, scraping(datastore):
        a = await pod_appears(datastore, busy_port, "busy")
        b = datastore.upsert(Endpoint(name="idle", ip="127.0.0.1", port=idle_port))
        await eventually(lambda: a.metrics.updated_at > 0 and b.metrics.updated_at > 0, what="first scrapes")
        assert (a.metrics.waiting, a.metrics.running, a.metrics.kv_cache_usage) == (4, 16, 0.8)
        assert (b.metrics.waiting, b.metrics.running) == (0, 0)
        idle.waiting = 9
        await eventually(lambda: b.metrics.waiting == 9, what="the new queue length")
        assert a.metrics.age() < float("inf")


async def test_a_failing_scrape_keeps_the_old_metrics_which_then_go_stale() -> None:
    server = FakeVllm(waiting=2)
    datastore = Datastore()
    async with serve(server.app()) as port, scraping(datastore) as scraper:
        endpoint = await pod_appears(datastore, port)
        await eventually(lambda: endpoint.metrics.updated_at > 0, what="a scrape")
        server.status = 503
        errors = scraper.errors
        await eventually(lambda: scraper.errors >= errors + 3, what="failed scrapes")
        last = endpoint.metrics
        await eventually(lambda: scraper.errors >= errors + 5, what="more failed scrapes")
        assert endpoint.metrics is last
        assert endpoint.metrics.waiting == 2
        now = last.updated_at + 1.0
        assert endpoint.metrics.age(now) == pytest.approx(1.0)
        server.status = 200
        await eventually(lambda: endpoint.metrics is not last, what="recovery")


async def test_an_endpoint_that_was_never_scraped_is_infinitely_stale() -> None:
    datastore = Datastore()
    async with scraping(datastore) as scraper:
        endpoint = await pod_appears(datastore, closed_port(), "gone")
        await eventually(lambda: scraper.errors >= 2, what="refused scrapes")
        assert endpoint.metrics.age() == float("inf")


async def test_a_removed_endpoint_is_no_longer_scraped() -> None:
    server = FakeVllm()
    datastore = Datastore()
    async with serve(server.app()) as port, scraping(datastore):
        endpoint = await pod_appears(datastore, port)
        await eventually(lambda: server.calls >= 2, what="scrapes")
        datastore.remove(endpoint.address)
        await asyncio.sleep(0.05)
        calls = server.calls
        await asyncio.sleep(0.1)
        assert server.calls == calls


INFINITE_LORA_PAGE = PAGE.format(waiting=1, running=0, kv=0.1) + (
    'vllm:lora_requests_info{max_lora="inf",running_lora_adapters="",waiting_lora_adapters=""} 1.0\n'
)


async def test_a_label_too_large_for_an_integer_fails_one_scrape_and_the_pod_keeps_being_scraped() -> None:
    # int(float("inf")) raises OverflowError, not ValueError: it used to kill the pod's scrape task.
    server = FakeVllm(waiting=1)
    pages = [INFINITE_LORA_PAGE]

    async def handle(request: web.Request) -> web.Response:
        server.calls += 1
        if pages:
            return web.Response(text=pages.pop(), content_type="text/plain")
        return web.Response(text=PAGE.format(waiting=3, running=0, kv=0.1), content_type="text/plain")

    datastore = Datastore()
    async with serve(one_route_app("/metrics", handle)) as port, scraping(datastore) as scraper:
        endpoint = await pod_appears(datastore, port)
        await eventually(lambda: endpoint.metrics.waiting == 3, what="the next good scrape")
        assert scraper.errors == 1


async def test_a_bug_met_while_scraping_is_counted_logged_once_and_scraping_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import epp.discovery.metrics as metrics_module

    parse = metrics_module.parse_vllm_metrics
    failures = [RuntimeError("a parser bug"), KeyError("another")]

    def sometimes_broken(text: str, now: float):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop(0)
        return parse(text, now)

    monkeypatch.setattr(metrics_module, "parse_vllm_metrics", sometimes_broken)
    server = FakeVllm(waiting=5)
    datastore = Datastore()
    kinds: list[str] = []
    async with serve(server.app()) as port:
        scraper = MetricsScraper(datastore, interval=0.02, timeout=1.0, on_error=kinds.append)
        async with running(scraper):
            endpoint = await pod_appears(datastore, port)
            await eventually(lambda: endpoint.metrics.waiting == 5, what="a scrape after the bugs")
    assert scraper.errors == 2
    assert kinds == ["metrics_unexpected", "metrics_unexpected"]
    logged = [r for r in caplog.records if "unexpected" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None


async def test_an_unchanged_page_is_not_parsed_again_yet_its_metrics_stay_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import epp.discovery.metrics as metrics_module

    parse = metrics_module.parse_vllm_metrics
    parsed: list[str] = []

    def counting(text: str, now: float):  # type: ignore[no-untyped-def]
        parsed.append(text)
        return parse(text, now)

    monkeypatch.setattr(metrics_module, "parse_vllm_metrics", counting)
    server = FakeVllm(waiting=2)
    datastore = Datastore()
    async with serve(server.app()) as port, scraping(datastore):
        endpoint = await pod_appears(datastore, port)
        await eventually(lambda: server.calls >= 5, what="several scrapes of one page")
        first = endpoint.metrics.updated_at
        await eventually(lambda: endpoint.metrics.updated_at > first, what="a fresher scrape")
        assert len(parsed) == 1
        server.waiting = 7
        await eventually(lambda: endpoint.metrics.waiting == 7, what="the changed page")
        assert len(parsed) == 2


async def test_a_pod_that_never_answers_times_out_while_the_others_are_scraped() -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    good = FakeVllm(waiting=1)
    datastore = Datastore()
    async with serve(good.app()) as good_port, serve(one_route_app("/metrics", hang)) as stuck_port:
        scraper = MetricsScraper(datastore, interval=0.02, timeout=0.1)
        async with running(scraper):
            ok = await pod_appears(datastore, good_port, "ok")
            stuck = datastore.upsert(Endpoint(name="stuck", ip="127.0.0.1", port=stuck_port))
            await eventually(lambda: scraper.errors >= 2, what="timed-out scrapes")
            calls = good.calls
            await eventually(lambda: good.calls >= calls + 5, what="the good pod scraped meanwhile")
            assert ok.metrics.waiting == 1
            assert stuck.metrics.age() == float("inf")


async def test_pages_sent_chunked_or_ended_by_the_close_are_read() -> None:
    page = PAGE.format(waiting=6, running=1, kv=0.5).encode()

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(page[:40])
        await response.write(page[40:])
        await response.write_eof()
        return response

    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + page)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(closing, "127.0.0.1", 0)
    close_port = server.sockets[0].getsockname()[1]
    datastore = Datastore()
    try:
        async with serve(one_route_app("/metrics", chunked)) as chunked_port, scraping(datastore) as scraper:
            a = await pod_appears(datastore, chunked_port, "chunked")
            b = datastore.upsert(Endpoint(name="closing", ip="127.0.0.1", port=close_port))
            await eventually(lambda: a.metrics.waiting == 6 and b.metrics.waiting == 6, what="both pages")
            scrapes = scraper.scrapes
            await eventually(lambda: scraper.scrapes >= scrapes + 6, what="more scrapes")
            assert scraper.errors == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_a_request_routed_while_a_scrape_is_answered_counts_on_top_of_it() -> None:
    # The pod reads its queue, then its page takes a while to reach the EPP; a request routed meanwhile
    # is not in the page. Stamped with when its answer came, the scrape would hide that request (the
    # pod would look one request lighter until the next scrape); stamped with when it was sent, the
    # request counts as routed since.
    read, release = asyncio.Event(), asyncio.Event()
    answered = 0

    async def slow_page(request: web.Request) -> web.Response:
        nonlocal answered
        body = PAGE.format(waiting=0, running=1, kv=0.1)
        read.set()
        if answered:  # later scrapes never answer: the first one's figures stay
            await asyncio.sleep(3600)
        await release.wait()
        answered += 1
        return web.Response(text=body, content_type="text/plain")

    datastore = Datastore()
    async with serve(one_route_app("/metrics", slow_page)) as port, scraping(datastore):
        endpoint = await pod_appears(datastore, port)
        await asyncio.wait_for(read.wait(), 5.0)
        await asyncio.sleep(2 * SEND_SHOWS_AFTER)  # routed well after the scrape was sent
        endpoint.load.routed(time.monotonic())
        await asyncio.sleep(2 * SEND_SHOWS_AFTER)
        release.set()
        await eventually(lambda: endpoint.metrics.updated_at > 0, what="the first scrape")
        assert endpoint.metrics.running == 1
        assert endpoint.estimated_load(time.monotonic() - 1.0) == 2
        # Its age runs from its answer, not its sending: a slow page is not stale on arrival.
        assert endpoint.metrics.updated_at - endpoint.metrics.sent_at > 2 * SEND_SHOWS_AFTER


async def test_each_scrape_notes_this_epps_own_count_when_it_was_sent() -> None:
    # What the page counts beyond that count is the others' (Endpoint.others), whatever this EPP
    # routed or saw end since.
    pod = FakeVllm(running=3)
    datastore = Datastore()
    async with serve(pod.app()) as port, scraping(datastore):
        endpoint = await pod_appears(datastore, port)
        endpoint.load.routed(time.monotonic())
        endpoint.load.routed(time.monotonic())
        sent = time.monotonic()
        await eventually(lambda: endpoint.metrics.sent_at > sent, what="a scrape sent after the routing")
        assert endpoint.metrics.own_at == 2
        assert endpoint.others() == 1
