"""Discovery as the EPP runs it: a source, the model prober and the metrics scraper together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from epp.datastore import Datastore
from epp.discovery import (
    DiscoveryRunner,
    EndpointsFileError,
    KubernetesConfigError,
    KubernetesDiscovery,
    StaticDiscovery,
    build_source,
)

import vllmsim

from .support import eventually

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"


def endpoints_yaml(*entries: tuple[str, int]) -> str:
    lines = ["endpoints:"]
    lines += [f"  - {{name: {name}, address: 127.0.0.1, port: {port}}}" for name, port in entries]
    return "\n".join(lines) + "\n"


async def test_simulated_pods_from_a_file_become_routable_with_their_models_and_load(tmp_path: Path) -> None:
    gemma_config = vllmsim.SimConfig(models=[GEMMA], loras={"sql-lora": GEMMA}, time_scale=0, pod_name="g")
    phi_config = vllmsim.SimConfig(models=[PHI], time_scale=0, pod_name="p")
    file = tmp_path / "pool.yaml"
    async with vllmsim.running(gemma_config) as gemma, vllmsim.running(phi_config) as phi:
        file.write_text(endpoints_yaml(("gemma-0", gemma.port), ("phi-0", phi.port)))
        datastore = Datastore()
        errors: list[str] = []
        source = build_source(datastore, endpoints_file=file, on_error=errors.append)
        assert isinstance(source, StaticDiscovery)
        async with (
            aiohttp.ClientSession() as session,
            DiscoveryRunner(datastore, source, session, metrics_interval=0.02, models_interval=5.0) as runner,
        ):
            await eventually(lambda: len(datastore.routable()) == 2, what="both pods to be routable")
            assert datastore.served_models() == sorted([GEMMA, "sql-lora", PHI])
            gemma_endpoint = datastore.get(f"127.0.0.1:{gemma.port}")
            assert gemma_endpoint is not None
            assert gemma_endpoint.lora_parents == {"sql-lora": GEMMA}
            await eventually(lambda: gemma_endpoint.metrics.updated_at > 0, what="a metrics scrape")
            assert gemma_endpoint.metrics.num_gpu_blocks == gemma_config.kv_cache_blocks
            assert runner.request_refresh(gemma_endpoint.address)

            file.write_text(endpoints_yaml(("gemma-0", gemma.port)))
            await eventually(lambda: len(datastore) == 1, what="phi to go")
            assert datastore.served_models() == sorted([GEMMA, "sql-lora"])
            assert runner.failure is None
            assert runner.errors == {"static": 0, "models": 0, "metrics": 0}
            tasks = runner._tasks
        assert all(task.done() for task in tasks)
        assert errors == []


async def test_a_source_that_cannot_start_is_reported_as_the_runners_failure() -> None:
    class Broken:
        name = "broken"
        errors = 0

        async def run(self) -> None:
            raise RuntimeError("no cluster configuration")

    async with (
        aiohttp.ClientSession() as session,
        DiscoveryRunner(Datastore(), Broken(), session) as runner,
    ):
        await eventually(lambda: runner.failure is not None, what="the failure")
        assert "no cluster configuration" in str(runner.failure)


async def test_the_pool_name_selects_kubernetes_discovery_in_the_given_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    source = build_source(Datastore(), pool_name="gemma", pool_namespace="llm")
    assert isinstance(source, KubernetesDiscovery)
    assert (source.namespace, source.pool_name) == ("llm", "gemma")
    await source._client.close()


def test_without_any_kubernetes_configuration_the_pool_name_fails_at_startup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubernetesConfigError, match="no Kubernetes configuration"):
        build_source(Datastore(), pool_name="gemma", pool_namespace="llm")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, "exactly one endpoint source is needed"),
        (
            {"pool_name": "gemma", "endpoints": "127.0.0.1:8000"},
            "exactly one endpoint source is needed: --pool-name, --endpoints-file or --endpoints "
            "(got --pool-name, --endpoints)",
        ),
        ({"endpoints": "127.0.0.1:8000", "pool_namespace": "llm"}, "--pool-namespace only applies"),
    ],
)
def test_the_endpoint_source_flags_must_name_exactly_one_source(flags: dict[str, str], expected: str) -> None:
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        build_source(Datastore(), **flags)  # type: ignore[arg-type]


def test_a_bad_endpoints_flag_fails_before_anything_starts() -> None:
    with pytest.raises(EndpointsFileError, match="entry 1"):
        build_source(Datastore(), endpoints="localhost")


async def test_leaving_the_runner_stops_every_probe_and_scrape() -> None:
    async with vllmsim.running(vllmsim.SimConfig(models=[GEMMA], time_scale=0)) as sim:
        datastore = Datastore()
        source = build_source(datastore, endpoints=f"127.0.0.1:{sim.port}")
        async with aiohttp.ClientSession() as session:
            async with DiscoveryRunner(datastore, source, session, metrics_interval=0.01) as runner:
                await eventually(lambda: len(datastore.routable()) == 1, what="the pod")
                scrapes = runner.scraper.scrapes
                await eventually(lambda: runner.scraper.scrapes > scrapes + 2, what="scraping")
            scrapes = runner.scraper.scrapes
            await asyncio.sleep(0.05)
            assert runner.scraper.scrapes == scrapes
