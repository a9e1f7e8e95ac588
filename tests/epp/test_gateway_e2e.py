"""End to end: a real Envoy in front of the BBR and EPPs (in this process) and simulated vLLM pods."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from epp.cli import BbrSettings, EppSettings, serve_bbr, serve_epp

import vllmsim
from onebox.envoy import EnvoyProcess, PoolRoute, gateway_config, unified_gateway_config
from tests.epp.gateway_support import (
    LOCAL,
    pods,
    serving,
    unified_gateway,
    until_gauges,
    wait_ready,
    write_endpoints,
)

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"
QWEN = "Qwen/Qwen2.5-3B-Instruct"


async def complete(
    session: aiohttp.ClientSession, url: str, model: str, **extra: Any
) -> tuple[int, str, Any]:
    body = {"model": model, "prompt": f"Say hello to {model}", "max_tokens": 4, **extra}
    async with session.post(f"{url}/v1/completions", json=body) as response:
        return response.status, response.headers.get("x-inference-pod", ""), await response.json()


async def raw_http(port: int, request: bytes) -> tuple[int, bytes]:
    """Send one hand-written HTTP/1.1 request (``Connection: close``); its status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read(-1)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_per_model_pools_route_every_request_to_a_pod_serving_its_model(tmp_path: Path) -> None:
    async with pods(("gemma-0", GEMMA), ("phi-0", PHI), ("phi-1", PHI)) as sims:
        gemma_file, phi_file = tmp_path / "gemma.yaml", tmp_path / "phi.yaml"
        write_endpoints(gemma_file, {"gemma-0": sims["gemma-0"]})
        write_endpoints(phi_file, {k: v for k, v in sims.items() if k.startswith("phi")})
        async with (
            serving(serve_bbr, BbrSettings(served_models=(GEMMA, PHI), **LOCAL)) as bbr,
            serving(serve_epp, EppSettings(endpoints_file=gemma_file, **LOCAL)) as gemma_epp,
            serving(serve_epp, EppSettings(endpoints_file=phi_file, **LOCAL)) as phi_epp,
        ):
            await asyncio.gather(wait_ready(gemma_epp.health), wait_ready(phi_epp.health))
            config = gateway_config(
                bbr=f"127.0.0.1:{bbr.grpc}",
                pools=[
                    PoolRoute(name="gemma", models=(GEMMA,), epp=f"127.0.0.1:{gemma_epp.grpc}"),
                    PoolRoute(name="phi", models=(PHI,), epp=f"127.0.0.1:{phi_epp.grpc}"),
                ],
            )
            async with EnvoyProcess(config) as envoy, aiohttp.ClientSession() as session:
                models = [GEMMA, PHI] * 20
                results = await asyncio.gather(*(complete(session, envoy.url, m) for m in models))
                for model, (status, pod, body) in zip(models, results, strict=True):
                    assert status == 200, body
                    assert body["model"] == model
                    assert pod.startswith("gemma" if model == GEMMA else "phi")

                status, _, body = await complete(session, envoy.url, QWEN)
                assert status == 404
                assert body["error"]["type"] == "not_found_error"
                assert f"{GEMMA}, {PHI}" in body["error"]["message"]

                async with session.post(f"{envoy.url}/v1/completions", data=b'{"model": ') as response:
                    assert response.status == 400
                    assert (await response.json())["error"]["code"] == 400

                listings = []
                for _ in range(5):
                    async with session.get(f"{envoy.url}/v1/models") as response:
                        assert response.status == 200
                        listings.append(await response.read())
                assert len(set(listings)) == 1
                assert [m["id"] for m in json.loads(listings[0])["data"]] == [GEMMA, PHI]

                async with session.get(f"{envoy.url}/no/such/path") as response:
                    assert response.status == 404
                    assert (await response.json())["error"]["type"] == "not_found_error"


async def test_a_unified_pool_never_sends_a_request_to_a_pod_of_another_model(tmp_path: Path) -> None:
    async with pods(("gemma-0", GEMMA), ("phi-0", PHI), ("qwen-0", QWEN)) as sims:
        endpoints = tmp_path / "pool.yaml"
        write_endpoints(endpoints, sims)
        async with serving(serve_epp, EppSettings(endpoints_file=endpoints, **LOCAL)) as epp:
            await wait_ready(epp.health)
            async with (
                EnvoyProcess(unified_gateway_config(epp=f"127.0.0.1:{epp.grpc}")) as envoy,
                aiohttp.ClientSession() as session,
            ):
                # Every pod's models must be known before the test sends traffic to all three.
                await until_gauges(session, epp.metrics, lambda g: len(g) == 3 and 0 not in g.values())
                models = [GEMMA, PHI, QWEN] * 10
                results = await asyncio.gather(*(complete(session, envoy.url, m) for m in models))
                for model, (status, pod, body) in zip(models, results, strict=True):
                    assert status == 200, body
                    assert pod == {GEMMA: "gemma-0", PHI: "phi-0", QWEN: "qwen-0"}[model]

                stream = {"stream": True, "stream_options": {"include_usage": True}}
                body = {"model": PHI, "prompt": "stream please", "max_tokens": 4, **stream}
                async with session.post(f"{envoy.url}/v1/completions", json=body) as response:
                    assert response.status == 200
                    assert response.headers["x-inference-pod"] == "phi-0"
                    text = await response.text()
                assert text.rstrip().endswith("data: [DONE]")


async def test_pods_added_and_removed_mid_run_are_picked_up_and_dropped_with_no_failed_request(
    tmp_path: Path,
) -> None:
    async with pods(("phi-0", PHI), ("phi-1", PHI), ("phi-2", PHI)) as sims:
        endpoints = tmp_path / "pool.yaml"
        write_endpoints(endpoints, {"phi-0": sims["phi-0"], "phi-1": sims["phi-1"]})
        async with serving(serve_epp, EppSettings(endpoints_file=endpoints, **LOCAL)) as epp:
            await wait_ready(epp.health)
            async with (
                EnvoyProcess(unified_gateway_config(epp=f"127.0.0.1:{epp.grpc}")) as envoy,
                aiohttp.ClientSession() as session,
            ):
                seen: list[str] = []
                failures: list[tuple[int, Any]] = []
                stop = asyncio.Event()

                async def traffic() -> None:
                    for _ in itertools.count():
                        if stop.is_set():
                            return
                        status, pod, body = await complete(session, envoy.url, PHI)
                        if status != 200:
                            failures.append((status, body))
                        seen.append(pod)

                async def until(condition: Callable[[dict[str, float]], object]) -> None:
                    await until_gauges(session, epp.metrics, condition)

                async def until_seen(condition: Callable[[], bool]) -> None:
                    async with asyncio.timeout(10):
                        while not condition():  # noqa: ASYNC110 - the traffic tasks fill `seen`
                            await asyncio.sleep(0.02)

                clients = [asyncio.create_task(traffic()) for _ in range(4)]
                try:
                    await until(lambda g: g.get("phi-0") and g.get("phi-1"))
                    write_endpoints(endpoints, sims)  # phi-2 joins
                    await until(lambda g: g.get("phi-2"))
                    mark = len(seen)
                    await until_seen(lambda: "phi-2" in seen[mark:])

                    # phi-1 leaves
                    write_endpoints(endpoints, {"phi-0": sims["phi-0"], "phi-2": sims["phi-2"]})
                    await until(lambda g: "phi-1" not in g)
                    await asyncio.sleep(0.2)  # responses already picked for phi-1 finish
                    mark = len(seen)
                    await until_seen(lambda: len(seen) >= mark + 40)
                    after_removal = seen[mark:]
                finally:
                    stop.set()
                    await asyncio.gather(*clients)

                assert failures == []
                assert "phi-1" not in after_removal
                assert set(after_removal) == {"phi-0", "phi-2"}


async def test_a_get_v1_models_whose_client_sends_an_empty_chunked_body_is_answered(tmp_path: Path) -> None:
    # Envoy passes the empty body on as a body message of its own, not as end_of_stream on the headers.
    async with pods(("gemma-0", GEMMA)) as sims:
        endpoints = tmp_path / "pool.yaml"
        write_endpoints(endpoints, sims)
        async with serving(serve_epp, EppSettings(endpoints_file=endpoints, **LOCAL)) as epp:
            await wait_ready(epp.health)
            async with EnvoyProcess(unified_gateway_config(epp=f"127.0.0.1:{epp.grpc}")) as envoy:
                status, body = await raw_http(
                    envoy.port,
                    b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                )
    assert status == 200, body
    assert b'"id":"google/gemma-2b-it"' in body


async def test_a_pod_on_ipv6_loopback_is_reached_through_envoy() -> None:
    config = vllmsim.SimConfig(models=[GEMMA], pod_name="gemma-v6", host="::1", time_scale=0, seed=1)
    async with vllmsim.running(config) as sim:
        settings = EppSettings(endpoints=f"[::1]:{sim.port}", **LOCAL)
        async with serving(serve_epp, settings) as epp:
            await wait_ready(epp.health)
            async with (
                EnvoyProcess(unified_gateway_config(epp=f"127.0.0.1:{epp.grpc}")) as envoy,
                aiohttp.ClientSession() as session,
            ):
                await until_gauges(session, epp.metrics, lambda g: g.get(f"[::1]:{sim.port}"))
                results = await asyncio.gather(*(complete(session, envoy.url, GEMMA) for _ in range(5)))
    for status, pod, body in results:
        assert status == 200, body
        assert pod == "gemma-v6"


async def test_a_picker_ranking_fallbacks_still_routes_every_request_through_envoy(tmp_path: Path) -> None:
    config_file = tmp_path / "epp.yaml"
    config_file.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- {type: queue-scorer}\n- {type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}\n"
        "schedulingProfiles:\n- name: default\n"
        "  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]\n"
    )
    async with pods(("phi-0", PHI), ("phi-1", PHI)) as sims:
        endpoints = tmp_path / "pool.yaml"
        write_endpoints(endpoints, sims)
        settings = EppSettings(endpoints_file=endpoints, config_file=config_file, **LOCAL)
        async with unified_gateway(settings, pods=2) as (_, envoy, session):
            results = await asyncio.gather(*(complete(session, envoy.url, PHI) for _ in range(10)))
    for status, pod, body in results:
        assert status == 200, body
        assert pod in {"phi-0", "phi-1"}
