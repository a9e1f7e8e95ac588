"""The prefix index learns from the cached tokens the pods report (``epp.requestcontrol.cached_tokens``).

A story on two pods: a system prompt's requests are sent to pod A, which then restarts. The next
request, predicted to hit A's cache, is answered with 0 cached tokens; A's stale entries are dropped
so that A no longer draws the other prefixes it had before the restart.
"""

from __future__ import annotations

import json
import random

from epp.datastore import Datastore
from epp.extproc.body import parse_body
from epp.extproc.response import ResponseTracker
from epp.requestcontrol.cached_tokens import CachedTokensFeedback
from epp.requestcontrol.plugins import EppExchange
from epp.scheduling import LLMRequest, Scheduler, parse_config
from epp.scheduling.types import SchedulingResult
from epp.telemetry import Telemetry

from tests.epp.extproc_support import pool
from tests.epp.requestcontrol.support import exchange, routed
from tests.epp.scheduling.builders import GEMMA

CONFIG = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
  - pluginRef: max-score-picker
"""
A, B = "10.0.0.1:8000", "10.0.0.2:8000"
SUPPORT = "You are the support assistant of a bicycle shop. Answer briefly. " * 8  # 8 blocks
SALES = "You are the sales assistant of a bicycle shop. Be friendly, not pushy. " * 8


class Pool:
    """A scheduler learning from cached tokens, the feedback plugin and its counters, two pods."""

    def __init__(self, rate: float = 1.0, draws: list[float] | None = None) -> None:
        self.scheduler = Scheduler.from_config(parse_config(CONFIG), rng=random.Random(1))
        assert self.scheduler.learn_from_cached_tokens()
        self.telemetry = Telemetry("epp")
        pending = list(draws or [])
        self.feedback = CachedTokensFeedback(rate, self.telemetry, uniform=lambda: pending.pop(0))
        self.datastore: Datastore = pool(("10.0.0.1", 8000, [GEMMA]), ("10.0.0.2", 8000, [GEMMA]))

    def endpoint(self, address: str) -> list:  # type: ignore[type-arg]
        found = self.datastore.get(address)
        assert found is not None
        return [found]

    def send(self, prompt: str, to: str, *, stream: bool = False, include_usage: bool = True) -> EppExchange:
        """Schedule a request for ``prompt`` among ``to`` alone, as the director does up to the pick."""
        request = LLMRequest(request_id="r", model=GEMMA, prompt=prompt,
                             usage_reported=not stream or include_usage)
        result: SchedulingResult = self.scheduler.schedule(request, self.endpoint(to))
        assert result.endpoint is not None
        ex = routed(exchange(), self.datastore, to)
        ex.state.request = request
        ex.state.cycle = result.cycle
        self.feedback.pre_request(ex, result.endpoint)
        return ex

    def answer(self, ex: EppExchange, usage: dict[str, object]) -> None:
        body = json.dumps({"model": GEMMA, "usage": usage}).encode()
        ex.response.on_headers({":status": "200", "content-type": "application/json"})
        ex.response.on_body(body)
        self.feedback.response_complete(ex)

    def scores(self, prompt: str) -> dict[str, float]:
        """The prefix scorer's view of both pods for ``prompt`` (scored only: nothing is recorded)."""
        request = LLMRequest(request_id="s", model=GEMMA, prompt=prompt)
        endpoints = [*self.endpoint(A), *self.endpoint(B)]
        scorer = self.scheduler.profiles["default"].scorers[0][0]
        return dict(zip((A, B), scorer.score({}, request, endpoints), strict=True))

    def count(self, outcome: str) -> float:
        return self.telemetry.registry.get_sample_value(
            "epp_cached_tokens_feedback_total", {"outcome": outcome}
        ) or 0.0


def usage(prompt_tokens: int, cached_tokens: int | None) -> dict[str, object]:
    details = None if cached_tokens is None else {"cached_tokens": cached_tokens}
    return {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5,
            "prompt_tokens_details": details}


def test_a_restarted_pod_answering_a_predicted_hit_with_no_cached_tokens_loses_its_stale_prefixes():
    box = Pool()
    box.answer(box.send(SALES, A), usage(140, 0))  # first sight: no prediction, nothing read
    box.answer(box.send(SUPPORT, A), usage(130, 0))
    assert box.scores(SALES)[A] > box.scores(SALES)[B]
    # Pod A restarts. The next support request is predicted to hit A's cache; A found nothing.
    ex = box.send(SUPPORT, A)
    assert box.feedback.wants_body(ex)
    box.answer(ex, usage(130, 0))
    assert box.count("stale") == 1
    # The sales prefix A held from before the restart no longer draws sales requests to A; the
    # support prefix A has just computed again still does.
    assert box.scores(SALES)[A] == box.scores(SALES)[B] == 0.0
    assert box.scores(SUPPORT)[A] > box.scores(SUPPORT)[B]


def test_a_predicted_hit_the_pod_confirms_keeps_the_pods_prefixes():
    box = Pool()
    box.answer(box.send(SALES, A), usage(140, 0))
    box.answer(box.send(SUPPORT, A), usage(130, 0))
    box.answer(box.send(SUPPORT, A), usage(130, 128))
    assert box.count("confirmed") == 1
    assert box.count("stale") == 0
    assert box.scores(SALES)[A] > box.scores(SALES)[B]


def test_requests_without_a_predicted_hit_or_without_usage_in_their_answer_are_not_read():
    box = Pool()
    first = box.send(SUPPORT, A)
    assert not box.feedback.wants_body(first)  # nothing predicted: the answer is not read
    assert first.state.cycle is None
    box.feedback.response_complete(first)
    # A stream without stream_options.include_usage carries no usage: no prediction is kept for it.
    streamed = box.send(SUPPORT, A, stream=True, include_usage=False)
    assert not box.feedback.wants_body(streamed)


def test_only_the_sampled_share_of_predicted_hits_is_read():
    box = Pool(rate=0.25, draws=[0.9, 0.1])
    box.answer(box.send(SUPPORT, A), usage(130, 0))
    assert not box.feedback.wants_body(box.send(SUPPORT, A))  # drew 0.9: not sampled
    assert box.feedback.wants_body(box.send(SUPPORT, A))  # drew 0.1


def test_a_pod_that_never_reports_cached_tokens_teaches_nothing():
    box = Pool()
    box.answer(box.send(SALES, A), usage(140, None))
    box.answer(box.send(SUPPORT, A), usage(130, None))
    box.answer(box.send(SUPPORT, A), usage(130, None))  # no details: its server runs without the flag
    assert box.count("unreported") == 1
    assert box.count("stale") == 0
    assert box.scores(SALES)[A] > box.scores(SALES)[B]


def test_once_a_pod_reported_details_an_answer_without_them_means_nothing_was_cached():
    box = Pool()
    box.answer(box.send(SALES, A), usage(140, 0))
    box.answer(box.send(SUPPORT, A), usage(130, 0))
    box.answer(box.send(SUPPORT, A), usage(130, 128))  # details seen: A runs with the flag
    box.answer(box.send(SUPPORT, A), usage(130, None))  # an older vLLM leaves out a zero
    assert box.count("stale") == 1
    assert box.scores(SALES)[A] == 0.0


def test_the_cached_tokens_are_read_from_a_streams_last_event_and_from_a_whole_answer():
    stream = ResponseTracker()
    stream.on_headers({":status": "200", "content-type": "text/event-stream"})
    stream.on_body(b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n')
    stream.on_body(b'data: {"choices":[],"usage":{"prompt_tokens":130,"completion_tokens":5,'
                   b'"prompt_tokens_details":{"cached_tokens":112,"created_cache_tokens":0}}}\n\n'
                   b"data: [DONE]\n\n")
    assert stream.usage() is not None
    assert stream.usage().cached_tokens == 112
    whole = ResponseTracker()
    whole.on_headers({":status": "200", "content-type": "application/json"})
    whole.on_body(json.dumps({"usage": usage(130, None)}).encode())
    assert whole.usage() is not None
    assert whole.usage().cached_tokens is None
    # Whether an answer will carry usage at all is known from the request.
    ask = {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}]}
    assert parse_body(json.dumps(ask).encode()).usage_reported
    assert not parse_body(json.dumps({**ask, "stream": True}).encode()).usage_reported
    streamed = {**ask, "stream": True, "stream_options": {"include_usage": True}}
    assert parse_body(json.dumps(streamed).encode()).usage_reported
