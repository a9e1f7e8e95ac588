"""The answer check (epp.answer_check) against the ResponseTracker's shapes of real answers."""

from __future__ import annotations

import json

import pytest
from epp.answer_check import AnswerCheck, answered_model
from epp.extproc.response import SSE_TAIL, ResponseTracker


class Counts:
    def __init__(self) -> None:
        self.checked: list[str] = []
        self.misrouted: list[tuple[str, str]] = []

    def answer_checked(self, model: str) -> None:
        self.checked.append(model)

    def answer_misrouted(self, model: str, pod: str) -> None:
        self.misrouted.append((model, pod))


def json_answer(model: str, status: int = 200) -> ResponseTracker:
    tracker = ResponseTracker()
    tracker.on_headers({":status": str(status), "content-type": "application/json"})
    body = json.dumps({"id": "x", "object": "chat.completion", "model": model, "choices": []}).encode()
    tracker.on_body(body[:10])
    tracker.on_body(body[10:])
    return tracker


def sse_answer(model: str, events: int = 3) -> ResponseTracker:
    tracker = ResponseTracker()
    tracker.on_headers({":status": "200", "content-type": "text/event-stream"})
    for i in range(events):
        chunk = {"id": "x", "object": "chat.completion.chunk", "model": model,
                 "choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}
        tracker.on_body(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    tracker.on_body(b"data: [DONE]\n\n")
    return tracker


def not_found(message: str) -> ResponseTracker:
    tracker = ResponseTracker()
    tracker.on_headers({":status": "404", "content-type": "application/json"})
    tracker.on_body(json.dumps({"error": {"message": message, "type": "NotFoundError"}}).encode())
    return tracker


def test_a_json_answer_from_the_model_asked_for_is_checked_and_right() -> None:
    counts = Counts()
    assert AnswerCheck(1.0, counts).check("m1", "pod-a", json_answer("m1"), sampled=True) is True
    assert counts.checked == ["m1"]
    assert counts.misrouted == []


def test_a_json_answer_from_another_model_is_a_misroute_by_model_and_pod() -> None:
    counts = Counts()
    assert AnswerCheck(1.0, counts).check("m1", "pod-b", json_answer("m2"), sampled=True) is False
    assert counts.misrouted == [("m1", "pod-b")]


def test_a_stream_names_its_model_in_every_chunk_even_when_only_the_tail_is_kept() -> None:
    long = sse_answer("m2", events=SSE_TAIL // 50)  # more than the kept tail
    assert answered_model(long) == "m2"
    counts = Counts()
    assert AnswerCheck(1.0, counts).check("m1", "p", long, sampled=True) is False
    assert AnswerCheck(1.0, counts).check("m2", "p", sse_answer("m2"), sampled=True) is True


def test_a_pod_saying_it_does_not_serve_the_model_is_a_misroute_even_unsampled() -> None:
    counts = Counts()
    check = AnswerCheck(0.5, counts, uniform=lambda: 0.9)
    assert check.check("m1", "p", not_found("The model `m1` does not exist."), sampled=False) is False
    assert counts.misrouted == [("m1", "p")]
    assert check.check("m1", "p", not_found("no such route"), sampled=False) is None


def test_unsampled_errors_and_unreadable_answers_are_not_counted() -> None:
    counts = Counts()
    check = AnswerCheck(1.0, counts)
    assert check.check("m1", "p", json_answer("m2"), sampled=False) is None
    assert check.check("m1", "p", json_answer("m2", status=500), sampled=True) is None
    garbled = ResponseTracker()
    garbled.on_headers({":status": "200", "content-type": "application/json"})
    garbled.on_body(b"{not json")
    assert check.check("m1", "p", garbled, sampled=True) is None
    assert counts.checked == []
    assert counts.misrouted == []


def test_sampling_follows_the_rate_and_is_never_drawn_when_off() -> None:
    draws: list[float] = []

    def uniform() -> float:
        draws.append(0.0)
        return 0.3

    assert not AnswerCheck(0.0, Counts(), uniform=uniform).sample()
    assert AnswerCheck(1.0, Counts(), uniform=uniform).sample()
    assert draws == []  # 0 and 1 need no draw
    assert AnswerCheck(0.5, Counts(), uniform=uniform).sample()
    assert not AnswerCheck(0.2, Counts(), uniform=uniform).sample()


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_a_rate_outside_0_1_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        AnswerCheck(rate, Counts())
