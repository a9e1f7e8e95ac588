"""Memory comes back to the system after a burst of large bodies (issue 20 item 1): the allocator's
free pages are given back once the bodies of a burst are released, not on every small request."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator

import pytest
from epp.cli import ServingPorts, _freeze_once_serving
from epp.extproc.stream import BodyBudget
from epp.memory import Trimmer, freeze_startup_heap, malloc_trim, return_large_blocks

MIB = 1 << 20


class Trims:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return True


def test_a_burst_of_bodies_is_trimmed_once_it_is_over() -> None:
    trims = Trims()
    budget = BodyBudget(64 * MIB, on_release=Trimmer(trims, after=32 * MIB))
    for _ in range(4):  # four 15 MB bodies held at once
        assert budget.reserve(15 * MIB)
    budget.release(15 * MIB)
    assert trims.calls == 0  # 15 MiB released, not yet a burst's worth
    budget.release(15 * MIB)
    assert trims.calls == 0  # 30 MiB still held: the burst goes on
    budget.release(15 * MIB)
    assert trims.calls == 1  # 45 MiB released and what is left (15 MiB) is under a burst: over
    budget.release(15 * MIB)
    assert trims.calls == 1  # counting starts again
    assert budget.held == 0


def test_small_requests_do_not_trim_until_a_bursts_worth_has_passed() -> None:
    trims = Trims()
    budget = BodyBudget(64 * MIB, on_release=Trimmer(trims, after=32 * MIB))
    for _ in range(8191):
        assert budget.reserve(4096)
        budget.release(4096)
    assert trims.calls == 0  # 4 KB short of 32 MiB of small bodies
    for _ in range(8192):
        assert budget.reserve(4096)
        budget.release(4096)
    assert trims.calls == 1  # past 32 MiB once, not twice: one trim per 32 MiB released


def test_this_c_library_can_give_memory_back() -> None:
    # glibc (the images' and this machine's): the thresholds are fixed and malloc_trim is there.
    assert return_large_blocks()
    trim = malloc_trim()
    assert trim is not None
    trim()


async def test_on_an_event_loop_the_trim_runs_beside_it_one_at_a_time() -> None:
    started = threading.Event()
    finish = threading.Event()
    threads: list[str] = []

    def slow_trim() -> bool:
        threads.append(threading.current_thread().name)
        started.set()
        finish.wait(5)
        return True

    trimmer = Trimmer(slow_trim, after=MIB)
    trimmer(MIB, 0)  # a burst's worth released: a trim starts, and this returns at once
    assert await asyncio.to_thread(started.wait, 5)
    trimmer(MIB, 0)  # another burst's worth while it runs: not a second trim
    finish.set()
    assert len(threads) == 1
    assert threads[0] != threading.current_thread().name  # not on the loop's thread
    assert trimmer.trims == 1


@pytest.fixture
def thawed() -> Iterator[None]:
    """Each test starts and ends with nothing frozen (the test process is not a server)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def _walked(thing: object) -> bool:
    """Whether the cyclic collector's full collections walk ``thing``."""
    return any(o is thing for o in gc.get_objects())


@pytest.mark.usefixtures("thawed")
def test_what_start_up_built_is_out_of_the_collectors_walks_and_what_comes_after_is_not() -> None:
    plan = {"profiles": [[] for _ in range(100)]}  # start-up's long-lived state
    assert _walked(plan)
    frozen = freeze_startup_heap()
    assert frozen >= 100
    assert gc.get_freeze_count() == frozen
    assert not _walked(plan)
    assert not any(_walked(p) for p in plan["profiles"])
    request = {"model": []}  # made while serving
    assert _walked(request)


@pytest.mark.usefixtures("thawed")
def test_a_server_freezes_its_start_up_heap_once_it_serves_and_not_when_it_failed_to_start() -> None:
    loop = asyncio.new_event_loop()
    try:
        failed: asyncio.Future[ServingPorts] = loop.create_future()
        failed.set_exception(OSError("address in use"))
        _freeze_once_serving(failed)
        assert gc.get_freeze_count() == 0
        serving: asyncio.Future[ServingPorts] = loop.create_future()
        serving.set_result(ServingPorts(grpc=9002, health=9003, metrics=9090))
        _freeze_once_serving(serving)
        assert gc.get_freeze_count() > 0
    finally:
        loop.close()
