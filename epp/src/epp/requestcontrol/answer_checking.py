"""Answer checking: routing accuracy measured in production (``epp.answer_check``).

On a sample of routed requests (``--answer-check-rate``) the answer's body is read and the model that
answered (the JSON answer's ``model``, or the first SSE chunk's) compared with the one asked for; a
mismatch counts ``epp_misrouted_total{model, model_server_pod}``. A pod's "model does not exist"
answer counts too, sampled or not. Nothing is read or counted at rate 0 (the plugin is not registered).
"""

from __future__ import annotations

from epp.answer_check import AnswerCheck
from epp.datastore import Datastore, Endpoint
from epp.requestcontrol.plugins import EppExchange


class AnswerChecking:
    """Pre-request (sample), response reader (read the sampled ones), response complete (check)."""

    def __init__(self, check: AnswerCheck, datastore: Datastore) -> None:
        self._check = check
        self._datastore = datastore

    def pre_request(self, exchange: EppExchange, endpoint: Endpoint) -> None:
        exchange.state.checked = self._check.sample()

    def wants_body(self, exchange: EppExchange) -> bool:
        return exchange.state.checked

    def wants_more(self, exchange: EppExchange) -> bool:
        # A stream names its model in every chunk: its first is enough, and the EPP then leaves the
        # stream's path (a replica lost later cuts no stream it checked).
        response = exchange.response
        return exchange.state.checked and not (response.streaming and response.sse_tail())

    def response_complete(self, exchange: EppExchange) -> None:
        state = exchange.state
        if not state.address or not exchange.response.status:
            return
        endpoint = self._datastore.get(state.address)
        pod = endpoint.name if endpoint is not None else state.address
        self._check.check(exchange.model, pod, exchange.response, sampled=state.checked)
