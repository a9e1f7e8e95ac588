"""Answer ends: short answers followed to their last byte, so a pod that just finished one does not
look busier than it is until its next scrape (``--follow-answers-up-to``).

Between two scrapes the EPP estimates a pod's load as the scraped ``waiting + running`` plus the
requests it routed there since (``Endpoint.estimated_load``). An answer that ends in that interval is
still counted, so a client that sends its next request as soon as an answer ends (a closed loop: an
agent, a batch worker) finds the pod it just left looking busier than the others and is sent to a
busier one. Followed to its end, the answer is taken off the pod's load at once.

Following costs a message and its reply per chunk of the answer: one or two for an answer that is not
streamed, about one per token for a stream, about 0.2 ms of the EPP's CPU each on a small machine. So
only completions and chat completions whose answers are cheap to follow are: every one that is not
streamed, and streams whose ``max_tokens`` (or ``max_completion_tokens``) is at most the limit. What
passes through is also metered (``usage_metering`` parses a followed answer's usage), and the
request stays in flight (``InFlight``, ``active-request-scorer``) until its end. A followed answer
keeps the EPP on its path to the end (a replica lost meanwhile cuts it).

A known bias: an end is taken off a load read from a scrape taken after the request was routed; if
that scrape did not count the request yet (its body still on its way, or being tokenized) or no
longer counted it (its last byte still on its way through Envoy), the pod looks one request lighter
until the next scrape.

Off (0) by default: measured on the one box (``python -m bench.timeline``), it brought the
long-prompt row's pods back to round robin's balance but multiplied the EPP's CPU per request by 1.5
(long prompts) to 4 (32-token streams). And only a pool's single replica sees every answer end: a
replica of several sees only its own, and loads right for some pods and stale for others placed
worse than uniformly stale ones (cache-bound, ``python -m bench.picksim``: 2 replicas / 1 fell from
0.96 to 0.92). Figures: ``docs/scheduling.md``, "Answer ends".
"""

from __future__ import annotations

from epp.api_routes import MAX_TOKENS_PATHS
from epp.datastore import Datastore, Endpoint
from epp.requestcontrol.plugins import EppExchange
from epp.scheduling.types import LLMRequest


def cheap_to_follow(request: LLMRequest, up_to_tokens: int) -> bool:
    """An answer of a message or two, or a stream of at most ``up_to_tokens`` tokens."""
    if not request.streamed:
        return True
    return request.max_tokens is not None and request.max_tokens <= up_to_tokens


class AnswerEnds:
    """Pre-request (follow this answer?), response reader (to its end), response complete (the
    pod's load drops)."""

    def __init__(self, datastore: Datastore, up_to_tokens: int) -> None:
        if up_to_tokens <= 0:
            raise ValueError(f"up_to_tokens must be positive, got {up_to_tokens}")
        self._datastore = datastore
        self.up_to_tokens = up_to_tokens

    def pre_request(self, exchange: EppExchange, endpoint: Endpoint) -> None:
        request = exchange.state.request
        exchange.state.to_end = (
            request is not None
            and exchange.path in MAX_TOKENS_PATHS  # not embeddings: no slot held while decoding
            and cheap_to_follow(request, self.up_to_tokens)
        )

    def wants_body(self, exchange: EppExchange) -> bool:
        return exchange.state.to_end

    def wants_more(self, exchange: EppExchange) -> bool:
        return exchange.state.to_end

    def response_complete(self, exchange: EppExchange) -> None:
        state = exchange.state
        if state.to_end and state.address and exchange.response.ended:
            self._datastore.answer_ended(state.address)
