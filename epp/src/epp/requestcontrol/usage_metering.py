"""Usage metering: the tokens of each answer, by model, and by tenant behind a front door with keys.

Behind a front door with API keys (the request carries the tenant header the BBR sets) every
answer's body is read to its end for its ``usage``, streamed or not; otherwise the usage is counted
only when the body passed through anyway.
"""

from __future__ import annotations

from epp.contract import TENANT_HEADER
from epp.requestcontrol.plugins import EppExchange
from epp.telemetry import Telemetry


class UsageMetering:
    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def wants_body(self, exchange: EppExchange) -> bool:
        return TENANT_HEADER in exchange.headers

    def wants_more(self, exchange: EppExchange) -> bool:
        return TENANT_HEADER in exchange.headers  # the usage is in the last event

    def response_complete(self, exchange: EppExchange) -> None:
        if not exchange.state.address:
            return
        usage = exchange.response.usage()
        if usage is None:
            return
        self._telemetry.tokens(exchange.model, usage.prompt_tokens, usage.completion_tokens)
        tenant = exchange.headers.get(TENANT_HEADER)
        if tenant is not None:
            self._telemetry.tenant_tokens(
                tenant, exchange.model, usage.prompt_tokens, usage.completion_tokens
            )
