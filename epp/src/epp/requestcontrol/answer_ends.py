"""Answer ends: a pod's load drops as soon as the EPP sees one of its answers end, not at its next scrape.

Between two scrapes the EPP estimates a pod's load as the scraped ``waiting + running`` (a waiting
request counted ``waitingWeight`` times by the prefix-affinity-scorer) plus the requests it routed
there since (``Endpoint.estimated_load``). An answer that ends in that interval is still counted,
so a client that sends its next request as soon as an answer ends (a closed loop: an agent, a batch
worker) would find the pod it just left looking busier than the others and be sent to a busier one.
So every end the EPP sees comes off the pod's load at once:

- **An answer that is not streamed** (completions, chat completions, embeddings) ends at its
  response headers: the model server sends them with the whole answer, once the request has left its
  batch (vLLM, the simulator). Not ``/v1/responses``, which may answer at once and work on after
  (``"background": true``). The EPP reads those headers for every request anyway (the in-flight
  count ends there), so this costs nothing.
- **A stream** ends at its last byte, or at its last event (``data: [DONE]``) where the client left
  before the last byte, which the EPP sees wherever the stream's chunks come through
  it: always where the proxy sends every response chunk (``FULL_DUPLEX_STREAMED`` responses, what
  the EPP takes a proxy that does not announce its modes to do); where the proxy lets it choose
  (``STREAMED``, the one box's default), only for the streams it reads to their end anyway (usage
  metering, a sampled cached-tokens check, flow control) and those it follows: a message and its
  reply per chunk, about one per token, some 0.2 ms of the EPP's CPU each on a small machine. Any
  streamed path counts (``/v1/responses`` too: a stream ends when the work does). Only completions
  and chat completions streamed with ``max_tokens`` (or ``max_completion_tokens``) of at most
  ``follow_streams_up_to`` are followed (``--follow-answers-up-to``, 0 by default: none). A followed
  stream stays in flight (``InFlight``, ``active-request-scorer``) to its end, its usage is metered,
  and it keeps the EPP on its path to the end (a replica lost meanwhile cuts it).

A lone EPP guesses the ends of the streams it did not see end instead, over the picker's candidates,
from the requests routed since the scrapes (``epp.datastore.unseen_ends``).

A stream cut short (the client went away) records no end: the pod may still be working on it. Nor
does a request the gateway could not connect to the pod for: it never took a slot.

A known bias: an end is taken off a load read from a scrape taken after the request was routed; if
that scrape no longer counted the request (it left the batch just before), the pod looks one request
lighter until the next scrape. The scorers that keep a prefix on one pod judge their load bound on
loads without the ends (``epp.scheduling.plugins.scorers.prefix_affinity``). Figures:
``docs/scheduling.md``, "Answer ends".
"""

from __future__ import annotations

from typing import Final

from epp.api_routes import MAX_TOKENS_PATHS
from epp.contract import API_PREFIX
from epp.datastore import Datastore, Endpoint
from epp.requestcontrol.plugins import EppExchange
from epp.scheduling.types import LLMRequest

# The paths whose answer, when not streamed, comes whole once the pod is done with the request.
ENDS_AT_HEADERS: Final = MAX_TOKENS_PATHS | {API_PREFIX + "embeddings"}


def follows_stream(request: LLMRequest, up_to_tokens: int) -> bool:
    """A stream of at most ``up_to_tokens`` tokens: followed to its end (an answer that is not streamed
    needs no following: its headers come at its end)."""
    return request.streamed and request.max_tokens is not None and request.max_tokens <= up_to_tokens


def end_seen(exchange: EppExchange) -> bool:
    """The answer (begun) came through this EPP up to its pod's end of the work: a stream to its last
    event, seen only where its chunks came through here; a whole answer on a path that answers once
    the work is done (``ENDS_AT_HEADERS``; not ``/v1/responses`` with ``"background"``, answered at
    once and worked on after)."""
    response = exchange.response
    if response.streaming:
        return response.ended or response.finished
    return exchange.path in ENDS_AT_HEADERS


class AnswerEnds:
    """Pre-request (follow this stream?), response reader (to its end), response complete (the pod's
    load drops)."""

    def __init__(self, datastore: Datastore, follow_streams_up_to: int = 0) -> None:
        if follow_streams_up_to < 0:
            raise ValueError(f"follow_streams_up_to must be 0 or more, got {follow_streams_up_to}")
        self._datastore = datastore
        self.follow_streams_up_to = follow_streams_up_to

    def pre_request(self, exchange: EppExchange, endpoint: Endpoint) -> None:
        request = exchange.state.request
        exchange.state.to_end = (
            self.follow_streams_up_to > 0
            and request is not None
            and exchange.path in MAX_TOKENS_PATHS  # not embeddings: never streamed
            and follows_stream(request, self.follow_streams_up_to)
        )

    def wants_body(self, exchange: EppExchange) -> bool:
        return exchange.state.to_end

    def wants_more(self, exchange: EppExchange) -> bool:
        return exchange.state.to_end

    def response_complete(self, exchange: EppExchange) -> None:
        state, response = exchange.state, exchange.response
        if not state.address or not response.status or response.connect_failed:
            return  # never routed, no answer began, or the pod was never reached
        if end_seen(exchange):
            self._datastore.answer_ended(state.address)
