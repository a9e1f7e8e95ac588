"""End to end through a real Envoy: a pod that refuses connections leaves rotation on what the
requests routed to it met (passive ejection), before its scrapes would have told."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from epp.cli import EppSettings
from epp.contract import UPSTREAM_CONNECT_FAILURE, UPSTREAM_FAILURE_HEADER
from epp.discovery import EjectionPolicy

from tests.epp.gateway_support import pods, unified_gateway, write_endpoints
from tests.epp.test_gateway_e2e import LOCAL, PHI

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

# Any endpoint may be picked, whatever its load: the dead pod is picked as often as the live one.
RANDOM_PICKER = (
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
    "plugins:\n- {type: random-picker}\n"
    "schedulingProfiles:\n- name: default\n  plugins: [{pluginRef: random-picker}]\n"
)


async def ejections(session: aiohttp.ClientSession, metrics_port: int) -> dict[str, float]:
    async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
        text = await response.text()
    counts = {}
    for line in text.splitlines():
        if line.startswith("epp_endpoint_ejections_total{"):
            labels, _, value = line.rpartition(" ")
            counts[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
    return counts


async def test_two_refused_connections_take_a_dead_pod_out_and_every_later_request_is_served(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "epp.yaml"
    config_file.write_text(RANDOM_PICKER)
    async with pods(("phi-0", PHI), ("phi-1", PHI)) as sims:
        endpoints = tmp_path / "pool.yaml"
        write_endpoints(endpoints, sims)
        # Scrapes alone would never eject it here: only the refused requests do.
        settings = EppSettings(
            endpoints_file=endpoints, config_file=config_file,
            ejection=EjectionPolicy(consecutive_failures=1_000_000, consecutive_connect_failures=2), **LOCAL,
        )  # fmt: skip
        async with unified_gateway(settings, pods=2) as (epp, envoy, session):
            await sims["phi-1"].stop()
            answers = []
            for _ in range(30):  # one at a time: each sees what the ones before taught the EPP
                body = {"model": PHI, "prompt": "hello", "max_tokens": 2}
                async with session.post(f"{envoy.url}/v1/completions", json=body) as response:
                    answers.append((
                        response.status, response.headers.get("x-inference-pod"),
                        response.headers.get(UPSTREAM_FAILURE_HEADER), json.loads(await response.read()),
                    ))  # fmt: skip
            counted = await ejections(session, epp.metrics)

    refused = [a for a in answers if a[0] != 200]
    assert [(status, failure) for status, _, failure, _ in refused] == [(502, UPSTREAM_CONNECT_FAILURE)] * 2
    assert all(body["error"]["type"] == "api_error" for *_, body in refused)
    last_refused = max(i for i, a in enumerate(answers) if a[0] != 200)
    assert {pod for _, pod, _, _ in answers[last_refused + 1:]} == {"phi-0"}
    assert counted == {"connect": 1.0}
