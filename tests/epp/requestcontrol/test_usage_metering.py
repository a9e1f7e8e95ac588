from __future__ import annotations

import json

from epp.contract import TENANT_HEADER
from epp.requestcontrol.usage_metering import UsageMetering
from epp.telemetry import Telemetry

from tests.epp.extproc_support import pool
from tests.epp.requestcontrol.support import exchange, routed

ANSWER = json.dumps({"model": "m", "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).encode()


def test_only_answers_behind_a_front_door_with_keys_are_read_to_their_end() -> None:
    metering = UsageMetering(Telemetry("epp"))
    assert metering.wants_body(exchange(headers={TENANT_HEADER: "team-a"}))
    assert not metering.wants_body(exchange())


def test_tokens_are_counted_by_model_and_by_tenant() -> None:
    datastore = pool(("10.0.0.1", 8000, ["m"]))
    telemetry = Telemetry("epp", datastore)
    metering = UsageMetering(telemetry)
    ex = routed(exchange(model="m", headers={TENANT_HEADER: "team-a"}, status=200, body=ANSWER), datastore,
                "10.0.0.1:8000")
    metering.response_complete(ex)
    metering.response_complete(exchange(model="m", status=200, body=ANSWER))  # never routed: not counted
    text = telemetry.registry.get_sample_value
    tokens = "epp_api_key_tokens_total"
    assert text(tokens, {"api_key_name": "team-a", "model": "m", "kind": "completion"}) == 3
    assert text(tokens, {"api_key_name": "team-a", "model": "m", "kind": "prompt"}) == 7
