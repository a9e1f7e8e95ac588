"""Answer ends: every answer's end the EPP sees comes off the pod's load at once; an answer that is not
streamed ends at its headers, a short stream is followed to its last byte when asked."""

from __future__ import annotations

import json
import time

import pytest
from epp.contract import UPSTREAM_CONNECT_FAILURE, UPSTREAM_FAILURE_HEADER
from epp.datastore import SEND_SHOWS_AFTER, Datastore, Endpoint
from epp.extproc.body import parse_body
from epp.requestcontrol.answer_ends import AnswerEnds, follows_stream
from epp.requestcontrol.inflight import InFlightRelease
from epp.requestcontrol.plugins import EppExchange
from epp.scheduling.types import LLMRequest

from tests.epp.extproc_support import pool
from tests.epp.requestcontrol.support import exchange, routed

POD = "10.0.0.1:8000"
SSE = {"content-type": "text/event-stream"}
JSON = {"content-type": "application/json"}


def chat(
    datastore: Datastore,
    *,
    streamed: bool,
    max_tokens: int | None = 16,
    status: int = 200,
    response_headers: dict[str, str] | None = None,
) -> EppExchange:
    """A chat completion routed to POD whose answer's headers came (the plugin's hooks not run yet)."""
    headers = response_headers if response_headers is not None else (SSE if streamed else JSON)
    ex = routed(exchange(status=status, response_headers=headers), datastore, POD)
    ex.state.request = LLMRequest("r1", "m", "hello", streamed=streamed, max_tokens=max_tokens)
    ex.headers[":path"] = "/v1/chat/completions"
    return ex


def one_pod() -> tuple[Datastore, Endpoint]:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    endpoint = datastore.get(POD)
    assert endpoint is not None
    return datastore, endpoint


def scraped_running(endpoint: Endpoint) -> float:
    """A scrape sent once the last request had had time to reach the pod (``SEND_SHOWS_AFTER``) saw
    it running; returns the scrape's time, once the clock has moved past it."""
    scraped = endpoint.load.sends[-1] + SEND_SHOWS_AFTER
    endpoint.metrics.running, endpoint.metrics.updated_at = 1, scraped
    while time.monotonic() <= scraped:
        time.sleep(0.001)
    return scraped


@pytest.mark.parametrize(
    ("streamed", "max_tokens", "up_to", "follow"),
    [
        (False, None, 32, False),  # not streamed: its headers are its end, nothing to follow
        (False, 4096, 32, False),
        (True, 32, 32, True),
        (True, 33, 32, False),
        (True, None, 32, False),
        (True, 16, 0, False),  # the default: no stream is followed
    ],
)
def test_only_short_streams_are_followed_and_only_when_asked(
    streamed: bool, max_tokens: int | None, up_to: int, follow: bool
) -> None:
    assert follows_stream(LLMRequest("r", "m", streamed=streamed, max_tokens=max_tokens), up_to) is follow
    datastore, endpoint = one_pod()
    ends = AnswerEnds(datastore, up_to)
    ex = chat(datastore, streamed=streamed, max_tokens=max_tokens)
    ends.pre_request(ex, endpoint)
    assert ends.wants_body(ex) is follow
    assert ends.wants_more(ex) is follow


def test_an_answer_not_streamed_comes_off_the_pods_load_at_its_headers_without_following_it() -> None:
    datastore, endpoint = one_pod()
    ends, release = AnswerEnds(datastore), InFlightRelease(datastore)  # the defaults
    ex = chat(datastore, streamed=False, max_tokens=None)
    ends.pre_request(ex, endpoint)
    assert not ends.wants_body(ex)
    scraped = scraped_running(endpoint)
    assert endpoint.estimated_load(0.0) == 1
    release.response_complete(ex)  # at the headers: the answer's body passes the EPP by
    ends.response_complete(ex)
    assert endpoint.load.ended_since(scraped) == 1
    assert endpoint.estimated_load(0.0) == 0
    assert endpoint.estimated_load(0.0, less_ended=False) == 1  # what the prefix scorer's bound reads


def test_a_followed_stream_comes_off_the_pods_load_at_its_last_byte() -> None:
    datastore, endpoint = one_pod()
    ends, release = AnswerEnds(datastore, 32), InFlightRelease(datastore)
    ex = chat(datastore, streamed=True)
    ends.pre_request(ex, endpoint)
    scraped = scraped_running(endpoint)
    ex.response.ended = True
    release.response_complete(ex)
    ends.response_complete(ex)
    assert endpoint.load.ended_since(scraped) == 1
    assert endpoint.estimated_load(0.0) == 0


def test_a_stream_not_followed_whose_end_came_through_anyway_comes_off_the_pods_load() -> None:
    """Full duplex (GKE) sends every chunk through the EPP, and metering reads some streams whole: an
    end seen is an end, whether or not the EPP chose to follow the stream."""
    datastore, endpoint = one_pod()
    ends = AnswerEnds(datastore, 0)
    ex = chat(datastore, streamed=True, max_tokens=500)
    ends.pre_request(ex, endpoint)
    scraped = scraped_running(endpoint)
    ex.response.ended = True
    ends.response_complete(ex)
    assert endpoint.load.ended_since(scraped) == 1


def test_a_streamed_responses_answer_ends_at_its_last_byte_unlike_one_answered_at_once() -> None:
    """``/v1/responses`` may answer whole before its work ends (``"background": true``), but a stream
    of it ends when the work does."""
    datastore, endpoint = one_pod()
    ends = AnswerEnds(datastore, 0)
    ex = chat(datastore, streamed=True)
    ex.headers[":path"] = "/v1/responses"
    ends.pre_request(ex, endpoint)
    ex.response.ended = True
    ends.response_complete(ex)
    assert endpoint.load.ended_since(0.0) == 1


def test_no_end_is_recorded_where_the_pod_may_still_be_working_or_never_was() -> None:
    datastore, endpoint = one_pod()
    ends = AnswerEnds(datastore, 32)
    cut = chat(datastore, streamed=True)  # followed, but the client went away before its end
    unfollowed = chat(datastore, streamed=True, max_tokens=500)  # its last byte passes unseen
    no_answer = chat(datastore, streamed=False, status=0)  # reset before any header came
    failed = {UPSTREAM_FAILURE_HEADER: UPSTREAM_CONNECT_FAILURE}
    unreached = chat(datastore, streamed=False, status=503, response_headers=failed)
    never_routed = exchange(status=200, response_headers=JSON)
    never_routed.state.request = LLMRequest("r1", "m", "hello")
    background = chat(datastore, streamed=False)  # the Responses API may answer before the work ends
    background.headers[":path"] = "/v1/responses"
    for ex in (cut, unfollowed, no_answer, unreached, never_routed, background):
        ends.pre_request(ex, endpoint)
        ends.response_complete(ex)
    assert endpoint.load.ended_since(0.0) == 0


def test_an_error_answer_ends_too() -> None:
    datastore, endpoint = one_pod()
    ends = AnswerEnds(datastore)
    ex = chat(datastore, streamed=False, status=400)  # the model server refused it: no slot held
    ends.pre_request(ex, endpoint)
    ends.response_complete(ex)
    assert endpoint.load.ended_since(0.0) == 1


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="follow_streams_up_to must be 0 or more"):
        AnswerEnds(pool(), -1)


def test_the_request_says_whether_its_answer_streams_and_how_long_it_may_be() -> None:
    ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    def parsed(**fields: object) -> tuple[bool, int | None]:
        body = parse_body(json.dumps({**ask, **fields}).encode())
        return body.streamed, body.max_tokens

    assert parsed() == (False, None)
    assert parsed(stream=True, max_tokens=16) == (True, 16)
    assert parsed(max_tokens=16, max_completion_tokens=64) == (False, 64)  # the newer name wins
    assert parsed(stream="yes", max_tokens=True) == (False, None)  # not a boolean true, not an integer
    assert parsed(max_tokens=0) == (False, None)  # the model server judges values like that
    assert parsed(max_tokens=12.0) == (False, None)


def test_an_embedding_ends_at_its_headers() -> None:
    datastore, endpoint = one_pod()
    ends = AnswerEnds(datastore)
    ex = chat(datastore, streamed=False)
    ex.headers[":path"] = "/v1/embeddings"
    ends.pre_request(ex, endpoint)
    ends.response_complete(ex)
    assert endpoint.load.ended_since(0.0) == 1


def test_embeddings_are_never_followed() -> None:
    datastore, endpoint = one_pod()
    ends = AnswerEnds(datastore, 32)
    ex = chat(datastore, streamed=True, max_tokens=16)
    ex.headers[":path"] = "/v1/embeddings"
    ends.pre_request(ex, endpoint)
    assert not ends.wants_body(ex)
