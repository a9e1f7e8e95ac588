"""Routing accuracy in production: did an answer come from the model the request asked for?

On a sample of routed requests (``rate``, 0 to 1) the picker reads the answer's body (as it does for
a metered tenant's usage) and, when the answer ends, this check reads the ``model`` field of the JSON
answer, or of a data event of a stream (every OpenAI chunk names its model), and compares it with the
model the request named. A backend's 404 saying it does not serve the model is a misroute too, seen
on every such answer, sampled or not (its body is read anyway). Each examined answer counts once in
``checked``; each one from another model counts in ``misrouted`` by the model asked for and the pod.

The default rate, 0.1, catches a pod that answers with the wrong model within a minute at one request
per second: the chance that none of its 60 answers is sampled is 0.9^60, about 0.2 %. At 0 the check
costs nothing: no request is sampled and no body is read for it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Protocol

DEFAULT_ANSWER_CHECK_RATE = 0.1


class Answer(Protocol):
    """What the check reads of a response (``epp.extproc.response.ResponseTracker``)."""

    status: int
    streaming: bool

    def body_json(self) -> object | None: ...

    def sse_tail(self) -> bytes: ...

    def model_not_found(self) -> bool: ...


class Counters(Protocol):
    """Where the results go (``epp.telemetry.Telemetry``)."""

    def answer_checked(self, model: str) -> None: ...

    def answer_misrouted(self, model: str, pod: str) -> None: ...


class AnswerCheck:
    """Samples routed requests and checks the model of their answers."""

    def __init__(
        self, rate: float, counters: Counters, *, uniform: Callable[[], float] = random.random
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"the answer check rate must be between 0 and 1, got {rate}")
        self.rate = rate
        self._counters = counters
        self._uniform = uniform

    def sample(self) -> bool:
        """Whether this request's answer is to be read and checked (never when the rate is 0)."""
        rate = self.rate
        return rate > 0.0 and (rate >= 1.0 or self._uniform() < rate)

    def check(self, model: str, pod: str, answer: Answer, *, sampled: bool) -> bool | None:
        """Count one answer; True: from ``model``; False: misrouted; None: nothing to check (an error
        other than a missing model, a body not kept, an answer naming no model, a request not sampled)."""
        if answer.status == 404 and answer.model_not_found():
            answered: str | None = None
        elif not sampled or not 200 <= answer.status < 300:
            return None
        else:
            answered = answered_model(answer)
            if answered is None:
                return None
        self._counters.answer_checked(model)
        if answered == model:
            return True
        self._counters.answer_misrouted(model, pod)
        return False


def answered_model(answer: Answer) -> str | None:
    """The ``model`` an answer names: the JSON body's, or the first complete data event's of a stream."""
    if not answer.streaming:
        document = answer.body_json()
        return _model_of(document)
    for line in answer.sse_tail().split(b"\n"):
        line = line.strip()
        if not line.startswith(b"data:") or b'"model"' not in line:
            continue
        try:
            event: object = json.loads(line[5:])
        except (ValueError, UnicodeDecodeError):
            continue  # the tail's first line may be cut
        model = _model_of(event)
        if model is not None:
            return model
    return None


def _model_of(document: object) -> str | None:
    if isinstance(document, dict):
        model = document.get("model")
        if isinstance(model, str):
            return model
    return None
