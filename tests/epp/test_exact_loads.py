"""Where the EPP sees every answer of its own end (a full-duplex proxy, or streams followed), its
in-flight count is exact: a pod's load is that count now plus what the scrape showed beyond it."""

from __future__ import annotations

import time

from epp.datastore import Datastore, Endpoint
from epp.extproc.response import ResponseTracker
from epp.requestcontrol.answer_ends import AnswerEnds
from epp.requestcontrol.inflight import InFlightRelease, may_still_run
from epp.requestcontrol.plugins import EppExchange
from epp.scheduling.plugins.scorers.prefix_affinity import PrefixAffinityScorer

from tests.epp.extproc_support import pool
from tests.epp.requestcontrol.support import exchange, routed

POD = "10.0.0.1:8000"
SSE = {"content-type": "text/event-stream"}
JSON = {"content-type": "application/json"}
LAST_EVENT = b'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n\ndata: [DONE]\n\n'


def one_pod() -> tuple[Datastore, Endpoint]:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    endpoint = datastore.get(POD)
    assert endpoint is not None
    return datastore, endpoint


def scrape(endpoint: Endpoint, running: int, waiting: int = 0) -> None:
    """A scrape sent now, showing ``running`` and ``waiting``, while this EPP had its count then."""
    m, now = endpoint.metrics, time.monotonic()
    m.running, m.waiting = running, waiting
    m.sent_at = m.updated_at = now
    m.own_at = endpoint.load.count


def chat(datastore: Datastore, *, streamed: bool, path: str = "/v1/chat/completions") -> EppExchange:
    ex = routed(exchange(status=200, response_headers=SSE if streamed else JSON), datastore, POD)
    ex.headers[":path"] = path
    return ex


def test_a_pod_refilled_just_before_its_scrape_is_not_counted_twice() -> None:
    # Routed a moment before the scrape was sent, the request is in the scrape and in the count: the
    # estimate from the scrape alone counts it twice (it may have been on its way), the exact one once.
    datastore, endpoint = one_pod()
    routed(exchange(), datastore, POD)
    scrape(endpoint, running=1)
    assert endpoint.counts_own_to_the_end()
    assert endpoint.estimated_load(0.0) == 1


def test_requests_of_others_the_scrape_counted_stay_on_top_of_this_epps_own() -> None:
    datastore, endpoint = one_pod()
    routed(exchange(), datastore, POD)
    scrape(endpoint, running=3)  # two are another replica's
    routed(exchange(), datastore, POD)
    assert endpoint.others() == 2
    assert endpoint.estimated_load(0.0) == 4


def test_an_answer_that_ends_comes_off_at_once_and_a_queue_drains_with_it() -> None:
    datastore, endpoint = one_pod()
    first = chat(datastore, streamed=True)
    for _ in range(4):
        routed(exchange(), datastore, POD)
    scrape(endpoint, running=4, waiting=1)
    assert endpoint.estimated_load(0.0, waiting_weight=2) == 6  # 4 running + 1 waiting counted twice
    routed(exchange(), datastore, POD)  # a request routed to a queuing pod waits too
    assert endpoint.estimated_load(0.0, waiting_weight=2) == 8
    first.response.ended = True
    InFlightRelease(datastore).response_complete(first)  # an end lets a waiting request start
    assert endpoint.counts_own_to_the_end()
    assert endpoint.estimated_load(0.0, waiting_weight=2) == 6


def test_a_stream_let_go_of_at_its_first_byte_brings_back_the_scrapes_estimate() -> None:
    datastore, endpoint = one_pod()
    stream = chat(datastore, streamed=True)
    scrape(endpoint, running=1)
    InFlightRelease(datastore).response_complete(stream)  # streamed, not followed: still running
    assert not endpoint.counts_own_to_the_end()
    # From the scrape: its running request, and the one routed just before it on top, as it may have
    # been on its way; not the count (0), which no longer holds the stream.
    assert endpoint.estimated_load(0.0) == 2


def test_which_answers_may_still_run_when_their_count_goes_back() -> None:
    datastore, _ = one_pod()
    assert may_still_run(chat(datastore, streamed=True))  # a stream let go of at its headers
    assert not may_still_run(chat(datastore, streamed=False))  # a whole answer: the pod was done
    assert may_still_run(chat(datastore, streamed=False, path="/v1/responses"))  # may work on after
    assert not may_still_run(routed(exchange(), datastore, POD))  # no answer began
    ended = chat(datastore, streamed=True)
    ended.response.ended = True
    assert not may_still_run(ended)
    last_event = chat(datastore, streamed=True)
    last_event.response.on_body(LAST_EVENT)  # the client left before the stream's very end
    assert not may_still_run(last_event)
    background = chat(datastore, streamed=False, path="/v1/responses")
    background.response.ended = True  # all of a background answer came: the pod works on
    assert may_still_run(background)


def test_a_stream_is_finished_once_its_last_event_came_through() -> None:
    tracker = ResponseTracker()
    tracker.on_headers({":status": "200", **SSE})
    tracker.on_body(b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n')
    assert not tracker.finished
    tracker.on_body(LAST_EVENT)
    assert tracker.finished
    whole = ResponseTracker()
    whole.on_headers({":status": "200", **JSON})
    whole.on_body(b'{"text": "data: [DONE]"}')
    assert not whole.finished
    quoted = ResponseTracker()  # a token's text quoting the last event, cut at a chunk's end
    quoted.on_headers({":status": "200", **SSE})
    quoted.on_body(b'data: {"choices":[{"delta":{"content":"say data: [DONE]')
    assert not quoted.finished


def test_a_stream_cut_after_its_last_event_counts_as_an_end() -> None:
    datastore, endpoint = one_pod()
    ex = chat(datastore, streamed=True)
    ex.response.on_body(LAST_EVENT)
    AnswerEnds(datastore).response_complete(ex)
    assert endpoint.load.ended_since(0.0) == 1


def test_no_end_is_guessed_among_requests_whose_ends_this_epp_sees() -> None:
    # Two pods, each with its own requests only; after the scrapes one more request went to b. A
    # lone picker that cannot see ends guesses one on the pod holding the oldest request (a); one that
    # sees them all guesses none: a still holds 2.
    datastore = pool(("10.0.0.1", 8000, ["m"]), ("10.0.0.2", 8000, ["m"]))
    a, b = datastore.get("10.0.0.1:8000"), datastore.get("10.0.0.2:8000")
    assert a is not None
    assert b is not None
    for address in ("10.0.0.1:8000", "10.0.0.1:8000", "10.0.0.2:8000"):
        routed(exchange(), datastore, address)
    scrape(a, running=2)
    scrape(b, running=1)
    time.sleep(0.03)  # past the window in which a request may not show in a scrape yet
    routed(exchange(), datastore, "10.0.0.2:8000")
    scorer = PrefixAffinityScorer("p")
    assert scorer.loads([a, b]) == [2, 2]
    a.metrics.own_at = b.metrics.own_at = -1  # as if the counts were not known to be exact
    assert scorer.loads([a, b]) != [2, 2]
