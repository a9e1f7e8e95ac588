"""Cached-tokens feedback: the learned prefix index corrected by what each pod says it found cached.

A pod started with vLLM's ``--enable-prompt-tokens-details`` reports, in each answer's usage,
``prompt_tokens_details.cached_tokens``: the prompt tokens it found in its prefix cache. With
``--cached-tokens-feedback-rate`` above 0 the prefix scorers keep, for each pick, what their index
predicted the picked pod holds (``epp.scheduling.prefix_index.CachePrediction``); on that share of the
requests with a predicted hit whose answer carries usage (not streamed, or streamed with
``stream_options.include_usage``), this plugin reads the answer and settles the prediction: a pod that
found the predicted blocks confirms it; one that did not has evicted them (or restarted), and the
index drops that pod's entries that are as old or older. The index so follows the pods' real caches
without KV-cache events and without a tokenizer.

What reading costs: a non-streamed answer is one buffered body message; a stream is followed to its
last event (the usage is there), so every chunk of it passes through the EPP: the rate bounds that.
Requests the index predicted no hit for are never read. Outcomes are counted in
``epp_cached_tokens_feedback{outcome}``: ``confirmed``, ``stale`` (entries dropped, counted in
``epp_prefix_index_stale_entries``) and ``unreported`` (no usage or no details in the answer).

A pod whose answers never carried the details (its server runs without the flag) teaches nothing.
Once one of its answers did, an answer without them counts as 0 cached tokens (older vLLM releases left
the details out when nothing was cached).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from epp.datastore import Endpoint
from epp.requestcontrol.plugins import EppExchange
from epp.scheduling.prefix_index import PREDICTIONS, kept_predictions


class FeedbackCounters(Protocol):
    """Where the outcomes go (``epp.telemetry.Telemetry``)."""

    def cached_tokens_feedback(self, outcome: str, stale_entries: int = 0) -> None: ...


class CachedTokensFeedback:
    """Pre-request (sample the predicted hits), response reader (read their answers), response
    complete (settle the predictions)."""

    def __init__(
        self, rate: float, counters: FeedbackCounters, *, uniform: Callable[[], float] = random.random
    ) -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"the cached-tokens feedback rate must be in (0, 1], got {rate}")
        self.rate = rate
        self._counters = counters
        self._uniform = uniform
        # Addresses whose answers have carried prompt_tokens_details.
        self._reporting: set[str] = set()

    def pre_request(self, exchange: EppExchange, endpoint: Endpoint) -> None:
        state = exchange.state
        cycle = state.cycle
        if cycle is None:
            return
        if PREDICTIONS in cycle and (self.rate >= 1.0 or self._uniform() < self.rate):
            state.learning = True
        else:
            state.cycle = None  # nothing to settle: let go of the cycle's hashes now

    def wants_body(self, exchange: EppExchange) -> bool:
        return exchange.state.learning

    def wants_more(self, exchange: EppExchange) -> bool:
        return exchange.state.learning  # a stream's usage is in its last event

    def response_complete(self, exchange: EppExchange) -> None:
        state = exchange.state
        cycle, state.cycle = state.cycle, None
        if not state.learning or cycle is None:
            return
        state.learning = False
        response = exchange.response
        if not 200 <= response.status < 300:
            return
        usage = response.usage()
        address = state.address
        cached = None if usage is None else usage.cached_tokens
        if usage is not None and cached is not None:
            self._reporting.add(address)
        elif usage is not None and address in self._reporting:
            cached = 0
        if usage is None or cached is None:
            self._counters.cached_tokens_feedback("unreported")
            return
        for prediction in kept_predictions(cycle):
            if prediction.address != address:  # another profile's pick, not the one that answered
                continue
            stale = prediction.settle(usage.prompt_tokens, cached)
            if stale is None:
                self._counters.cached_tokens_feedback("confirmed")
            else:
                self._counters.cached_tokens_feedback("stale", stale)
