"""decode-filter: keep endpoints that can run the decode phase (llm-d semantics).

An endpoint's role is its ``llm-d.ai/role`` label: ``decode``, ``both`` and ``prefill-decode`` can
decode, ``prefill`` cannot; an endpoint without the label is a regular one and is kept.
"""

from __future__ import annotations

from epp.datastore import Endpoint
from epp.scheduling.framework import Filter
from epp.scheduling.registry import register
from epp.scheduling.types import CycleState, LLMRequest

ROLE_LABEL = "llm-d.ai/role"
DECODE_ROLES = frozenset({"decode", "both", "prefill-decode"})


@register
class DecodeFilter(Filter):
    type_name = "decode-filter"

    def filter(self, state: CycleState, request: LLMRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        kept = []
        for endpoint in endpoints:
            role = endpoint.labels.get(ROLE_LABEL)
            if role is None or role in DECODE_ROLES:
                kept.append(endpoint)
        return kept

