"""Answer ends: short answers are followed to their last byte, which comes off the pod's load."""

from __future__ import annotations

import json
import time

import pytest
from epp.datastore import Datastore
from epp.extproc.body import parse_body
from epp.requestcontrol.answer_ends import AnswerEnds, cheap_to_follow
from epp.requestcontrol.inflight import InFlightRelease
from epp.requestcontrol.plugins import EppExchange
from epp.scheduling.types import LLMRequest

from tests.epp.extproc_support import pool
from tests.epp.requestcontrol.support import exchange, routed

POD = "10.0.0.1:8000"


def asked(ex: EppExchange, *, streamed: bool, max_tokens: int | None) -> EppExchange:
    ex.state.request = LLMRequest("r1", "m", "hello", streamed=streamed, max_tokens=max_tokens)
    return ex


def followed(datastore: Datastore, *, streamed: bool = True, max_tokens: int | None = 16) -> EppExchange:
    """A chat completion routed to POD (the plugin's pre-request hook not run yet)."""
    ex = asked(routed(exchange(status=200), datastore, POD), streamed=streamed, max_tokens=max_tokens)
    ex.headers[":path"] = "/v1/chat/completions"
    return ex


@pytest.mark.parametrize(
    ("streamed", "max_tokens", "follow"),
    [(False, None, True), (False, 4096, True), (True, 32, True), (True, 33, False), (True, None, False)],
)
def test_only_answers_of_a_message_or_two_or_short_streams_are_followed(
    streamed: bool, max_tokens: int | None, follow: bool
) -> None:
    assert cheap_to_follow(LLMRequest("r", "m", streamed=streamed, max_tokens=max_tokens), 32) is follow
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    ends = AnswerEnds(datastore, 32)
    ex = followed(datastore, streamed=streamed, max_tokens=max_tokens)
    ends.pre_request(ex, datastore.get(POD))  # type: ignore[arg-type]
    assert ends.wants_body(ex) is follow
    assert ends.wants_more(ex) is follow


def test_an_answer_seen_to_its_end_comes_off_the_pods_load_at_once() -> None:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    endpoint = datastore.get(POD)
    assert endpoint is not None
    ends, release = AnswerEnds(datastore, 32), InFlightRelease(datastore)
    ex = followed(datastore)
    ends.pre_request(ex, endpoint)
    scraped = endpoint.load.sends[-1]  # a scrape at the moment it was routed saw it running
    endpoint.metrics.running, endpoint.metrics.updated_at = 1, scraped
    assert endpoint.estimated_load(0.0) == 1
    while time.monotonic() <= scraped:  # its end comes later (a no-op on any real clock)
        time.sleep(0)
    ex.response.ended = True
    release.response_complete(ex)
    ends.response_complete(ex)
    assert endpoint.load.ended_since(scraped) == 1
    assert endpoint.estimated_load(0.0) == 0


def test_an_answer_cut_short_or_not_followed_records_no_end() -> None:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    endpoint = datastore.get(POD)
    assert endpoint is not None
    ends = AnswerEnds(datastore, 32)
    cut = followed(datastore)
    ends.pre_request(cut, endpoint)
    ends.response_complete(cut)  # the client went away: the pod may still be working on it
    long = followed(datastore, max_tokens=500)
    ends.pre_request(long, endpoint)
    long.response.ended = True
    ends.response_complete(long)
    never_routed = asked(exchange(), streamed=False, max_tokens=None)
    ends.pre_request(never_routed, endpoint)
    never_routed.response.ended = True
    ends.response_complete(never_routed)
    assert endpoint.load.ended_since(0.0) == 0


def test_a_limit_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="up_to_tokens must be positive"):
        AnswerEnds(pool(), 0)


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


def test_embeddings_are_never_followed() -> None:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    ends = AnswerEnds(datastore, 32)
    ex = followed(datastore, streamed=False, max_tokens=None)
    ex.headers[":path"] = "/v1/embeddings"
    ends.pre_request(ex, datastore.get(POD))  # type: ignore[arg-type]
    assert not ends.wants_body(ex)
