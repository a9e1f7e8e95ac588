"""The request-control extension points of the EPP's director, as small protocols.

The shape of upstream's request-control plugins (llm-d-router ``requestcontrol``), in Python:

- :class:`Admitter`: after parsing, before scheduling; raises a ``RequestError`` to refuse the
  request (saturation shedding today; API keys and a flow-control queue plug in here). A coroutine,
  so an admitter may make a request wait.
- :class:`ResponseReader`: whether an answer's body must be read (usage metering).
- :class:`ResponseComplete`: the exchange is over, whatever ended it (in-flight release, ejection
  evidence, model refresh, usage metering, request metrics).

Plugins are registered once, at start-up, in :func:`epp.requestcontrol.standard.standard_plugins`,
and run in the order registered.
"""

from __future__ import annotations

from typing import Protocol

from epp.datastore import Endpoint, InFlight, PoolView
from epp.extproc.stream import Exchange
from epp.scheduling.types import CycleState, LLMRequest


class EppState:
    """The EPP's per-request state: what a routed request holds until its exchange is over."""

    __slots__ = ("address", "checked", "count", "cycle", "learning", "request", "started", "to_end")

    def __init__(self) -> None:
        # The parsed request, once parsed.
        self.request: LLMRequest | None = None
        # The picked endpoint's address and the in-flight count acquired on it; empty/None until
        # the request is routed.
        self.address = ""
        self.count: InFlight | None = None
        # time.perf_counter() when it was routed (its latency's start).
        self.started = 0.0
        # Sampled by the answer check: its answer is read and the model that answered checked.
        self.checked = False
        # The scheduling cycle's scratch space, kept while the prefix index learns from answers
        # (``SchedulingResult.cycle``), and whether this answer's cached tokens are to be read.
        self.cycle: CycleState | None = None
        self.learning = False
        # Its answer is followed to its last byte, which then comes off the pod's load (answer ends).
        self.to_end = False

    @property
    def routed(self) -> bool:
        return self.count is not None


EppExchange = Exchange[EppState]


class Admitter(Protocol):
    async def admit(self, request: LLMRequest, view: PoolView) -> LLMRequest | None:
        """Let ``request`` on to scheduling (None), or the same request narrowed (its ``subset``: the
        endpoints it may go to), or raise a ``RequestError`` (may wait first)."""
        ...


class PreRequest(Protocol):
    def pre_request(self, exchange: EppExchange, endpoint: Endpoint) -> None:
        """``exchange`` was scheduled on ``endpoint`` and is about to be routed there."""
        ...


class ResponseReader(Protocol):
    def wants_body(self, exchange: EppExchange) -> bool:
        """True when the answer's body must be read (its usage metered, its model checked)."""
        ...

    def wants_more(self, exchange: EppExchange) -> bool:
        """After a chunk of the body: True while more of it is needed."""
        ...


class ResponseComplete(Protocol):
    def response_complete(self, exchange: EppExchange) -> None:
        """The exchange is over (answered, refused or cancelled); ``exchange.response`` holds what
        was seen of the answer."""
        ...
