"""Kubernetes discovery with lightkube against a fake API server: the InferencePool's ready Pods."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from epp.datastore import Datastore
from epp.discovery import KubernetesDiscovery, default_namespace
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import Cluster, User

from .fake_kube import FakeKube, pod, pool
from .support import eventually, running, serve

NAMESPACE = "llm"
SELECTOR = {"app": "vllm"}


@asynccontextmanager
async def discovering(kube: FakeKube, datastore: Datastore) -> AsyncIterator[KubernetesDiscovery]:
    async with serve(kube.app()) as port:
        # from_server() leaves the user unset, which lightkube's client refuses: an anonymous user.
        config = KubeConfig.from_one(
            cluster=Cluster(server=f"http://127.0.0.1:{port}"), user=User(), namespace=NAMESPACE
        )
        client = AsyncClient(config=config, trust_env=False)
        discovery = KubernetesDiscovery(datastore, NAMESPACE, "gemma", client, backoff_first=0.02)
        try:
            async with running(discovery):
                yield discovery
        finally:
            await client.close()


def endpoints(datastore: Datastore) -> dict[str, str]:
    return {endpoint.address: endpoint.name for endpoint in datastore}


@pytest.fixture
def kube() -> FakeKube:
    kube = FakeKube(NAMESPACE)
    kube.put_pool(pool("gemma", SELECTOR, [8000]))
    return kube


async def test_the_ready_pods_selected_by_the_pool_are_the_endpoints_after_the_first_sync(
    kube: FakeKube,
) -> None:
    kube.put_pod(pod("gemma-0", "10.0.0.1"))
    kube.put_pod(pod("gemma-1", "10.0.0.2"))
    kube.put_pod(pod("gemma-2", "10.0.0.3", ready=False))
    kube.put_pod(pod("gemma-3", None, ready=False))
    kube.put_pod(pod("phi-0", "10.0.1.1", labels={"app": "phi"}))
    datastore = Datastore()
    async with discovering(kube, datastore):
        await eventually(lambda: datastore.synced, what="the first sync")
        assert endpoints(datastore) == {"10.0.0.1:8000": "gemma-0", "10.0.0.2:8000": "gemma-1"}
        assert datastore.get("10.0.0.1:8000").labels == {"app": "vllm"}  # type: ignore[union-attr]
    assert any("labelSelector=app%3Dvllm" in r or "labelSelector=app=vllm" in r for r in kube.requests)


async def test_a_pod_that_turns_ready_becomes_an_endpoint(kube: FakeKube) -> None:
    kube.put_pod(pod("gemma-0", None, ready=False))
    datastore = Datastore()
    async with discovering(kube, datastore):
        await eventually(lambda: datastore.synced, what="the first sync")
        assert len(datastore) == 0
        kube.put_pod(pod("gemma-0", "10.0.0.7", ready=False))
        await asyncio.sleep(0.05)
        assert len(datastore) == 0
        kube.put_pod(pod("gemma-0", "10.0.0.7"))
        await eventually(lambda: endpoints(datastore) == {"10.0.0.7:8000": "gemma-0"}, what="the ready pod")


async def test_a_terminating_pod_gets_no_further_picks(kube: FakeKube) -> None:
    kube.put_pod(pod("gemma-0", "10.0.0.1"))
    kube.put_pod(pod("gemma-1", "10.0.0.2"))
    datastore = Datastore()
    async with discovering(kube, datastore):
        await eventually(lambda: len(datastore) == 2, what="both pods")
        kube.put_pod(pod("gemma-0", "10.0.0.1", terminating=True))
        await eventually(lambda: "10.0.0.1:8000" not in endpoints(datastore), what="the removal")
        assert endpoints(datastore) == {"10.0.0.2:8000": "gemma-1"}


async def test_a_pod_that_stops_being_ready_or_is_deleted_is_removed(kube: FakeKube) -> None:
    kube.put_pod(pod("gemma-0", "10.0.0.1"))
    kube.put_pod(pod("gemma-1", "10.0.0.2"))
    datastore = Datastore()
    async with discovering(kube, datastore):
        await eventually(lambda: len(datastore) == 2, what="both pods")
        kube.put_pod(pod("gemma-0", "10.0.0.1", ready=False))
        kube.delete_pod("gemma-1")
        await eventually(lambda: len(datastore) == 0, what="both removals")


async def test_a_pod_with_two_target_ports_yields_two_endpoints(kube: FakeKube) -> None:
    kube.put_pool(pool("gemma", SELECTOR, [8000, 8001]))
    kube.put_pod(pod("gemma-0", "10.0.0.1"))
    datastore = Datastore()
    async with discovering(kube, datastore):
        await eventually(lambda: datastore.synced, what="the first sync")
        assert endpoints(datastore) == {
            "10.0.0.1:8000": "gemma-0:8000",
            "10.0.0.1:8001": "gemma-0:8001",
        }
        kube.delete_pod("gemma-0")
        await eventually(lambda: len(datastore) == 0, what="both endpoints to go")


async def test_a_change_of_the_pools_ports_or_selector_resyncs_its_pods(kube: FakeKube) -> None:
    kube.put_pod(pod("gemma-0", "10.0.0.1"))
    kube.put_pod(pod("gemma-canary", "10.0.0.9", labels={"app": "vllm", "track": "canary"}))
    datastore = Datastore()
    async with discovering(kube, datastore) as discovery:
        await eventually(lambda: len(datastore) == 2, what="both pods")
        kube.put_pool(pool("gemma", SELECTOR, [9000]))
        await eventually(
            lambda: set(endpoints(datastore)) == {"10.0.0.1:9000", "10.0.0.9:9000"}, what="the new port"
        )
        kube.put_pool(pool("gemma", {"app": "vllm", "track": "canary"}, [9000]))
        await eventually(lambda: set(endpoints(datastore)) == {"10.0.0.9:9000"}, what="the narrower selector")
        assert discovery.spec is not None
        assert discovery.spec.ports == [9000]


async def test_a_deleted_pool_drops_its_endpoints_until_it_comes_back(kube: FakeKube) -> None:
    kube.put_pod(pod("gemma-0", "10.0.0.1"))
    datastore = Datastore()
    async with discovering(kube, datastore):
        await eventually(lambda: len(datastore) == 1, what="the pod")
        kube.delete_pool("gemma")
        await eventually(lambda: len(datastore) == 0, what="the endpoints to go")
        kube.put_pool(pool("gemma", SELECTOR, [8000]))
        await eventually(lambda: len(datastore) == 1, what="the endpoints to come back")


async def test_an_expired_watch_is_relisted_and_changes_made_meanwhile_are_not_lost(kube: FakeKube) -> None:
    kube.put_pod(pod("gemma-0", "10.0.0.1"))
    kube.put_pod(pod("gemma-1", "10.0.0.2"))
    datastore = Datastore()
    errors: list[str] = []
    async with discovering(kube, datastore) as discovery:
        discovery._on_error = errors.append
        await eventually(lambda: len(datastore) == 2 and kube.open_watches == 2, what="pods and watches")
        lists_before = sum(1 for r in kube.requests if "pods" in r and "watch=true" not in r)
        kube.expire_watches()
        kube.delete_pod("gemma-1")
        kube.put_pod(pod("gemma-2", "10.0.0.3"))
        await eventually(
            lambda: set(endpoints(datastore)) == {"10.0.0.1:8000", "10.0.0.3:8000"}, what="the resync"
        )
        await eventually(lambda: discovery.errors >= 2, what="both expired watches to be counted")
        assert errors[:2] == ["kubernetes", "kubernetes"]
        await eventually(
            lambda: sum(1 for r in kube.requests if "pods" in r and "watch=true" not in r) > lists_before,
            what="a fresh listing",
        )
        kube.put_pod(pod("gemma-3", "10.0.0.4"))
        await eventually(lambda: "10.0.0.4:8000" in endpoints(datastore), what="watching again")


async def test_a_missing_pool_is_retried_with_backoff_and_the_epp_stays_unsynced() -> None:
    kube = FakeKube(NAMESPACE)
    kube.put_pod(pod("gemma-0", "10.0.0.1"))
    datastore = Datastore()
    async with discovering(kube, datastore) as discovery:
        await eventually(lambda: discovery.errors >= 2, what="failed gets")
        assert not datastore.synced
        kube.put_pool(pool("gemma", SELECTOR, [8000]))
        await eventually(lambda: datastore.synced and len(datastore) == 1, what="the pool to appear")


async def test_an_ip_reused_by_a_new_pod_is_not_dropped_by_the_old_pods_deletion(kube: FakeKube) -> None:
    kube.put_pod(pod("gemma-old", "10.0.0.1"))
    datastore = Datastore()
    async with discovering(kube, datastore):
        await eventually(lambda: len(datastore) == 1, what="the old pod")
        kube.put_pod(pod("gemma-new", "10.0.0.1"))
        await eventually(lambda: endpoints(datastore) == {"10.0.0.1:8000": "gemma-new"}, what="the new owner")
        kube.delete_pod("gemma-old")
        await asyncio.sleep(0.05)
        assert endpoints(datastore) == {"10.0.0.1:8000": "gemma-new"}


def test_the_namespace_comes_from_the_environment_then_the_service_account_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = tmp_path / "namespace"
    monkeypatch.setenv("POD_NAMESPACE", "from-env")
    assert default_namespace(account) == "from-env"
    monkeypatch.delenv("POD_NAMESPACE")
    account.write_text("from-account\n")
    assert default_namespace(account) == "from-account"
    account.unlink()
    assert default_namespace(account) == "default"
