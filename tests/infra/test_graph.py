"""The dependency graph, read from the recorded RegisterResource requests.

The orderings the engine must honour are explicit ``depends_on`` edges, not accidents of which
output feeds which input: the InferencePool API before every InferencePool (the GKE cluster that
ships the CRD, or the CRD itself with ``inferencePoolCrd: install``), each pool before its
HealthCheckPolicy, the proxy-only subnet before the Gateway, and the image before the EPP.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from components.config import GKE_MANAGED_INFERENCE_POOL_CRD_VERSION
from render import RegisteredResource, StackRun, render_stack
from tests.infra.conftest import (
    CLUSTER,
    CRD,
    DEPLOYMENT,
    GATEWAY,
    HEALTH_CHECK_POLICY,
    IMAGE,
    POOL,
    SUBNET,
    named,
    of_type,
)


def _explicit(resource: RegisteredResource) -> set[str]:
    """Dependencies that no input value explains: they can only come from ``depends_on``."""
    implicit = {urn for urns in resource.property_dependencies.values() for urn in urns}
    return set(resource.dependencies) - implicit


def test_on_gke_the_cluster_ships_the_crd_and_every_inference_pool_waits_for_it(stack_run: StackRun) -> None:
    [cluster] = of_type(stack_run, CLUSTER)
    pools = of_type(stack_run, POOL)

    assert of_type(stack_run, CRD) == []  # not ours to create, nor to delete on destroy
    # No version pinned: the REGULAR channel's default (mocked 1.34.1-gke.3971000) already ships the CRD.
    assert cluster.props.get("minMasterVersion") is None
    assert cluster.props["releaseChannel"] == {"channel": "REGULAR"}
    assert GKE_MANAGED_INFERENCE_POOL_CRD_VERSION == "1.34.0-gke.1626000"
    assert len(pools) == 2
    for pool in pools:
        assert cluster.urn in _explicit(pool)


def test_every_inference_pool_waits_for_the_crd(installed_crd: StackRun) -> None:
    [crd] = of_type(installed_crd, CRD)
    pools = of_type(installed_crd, POOL)

    assert len(pools) == 2
    for pool in pools:
        assert crd.urn in _explicit(pool)


def test_an_installed_crd_leaves_the_cluster_version_to_its_release_channel(installed_crd: StackRun) -> None:
    [cluster] = of_type(installed_crd, CLUSTER)

    assert cluster.props.get("minMasterVersion") is None


def test_an_installed_crd_is_forgotten_not_deleted_when_the_program_drops_it(installed_crd: StackRun) -> None:
    # Switching to gke-managed removes the CRD from the program; deleting it would take every pool along.
    [crd] = of_type(installed_crd, CRD)

    assert crd.props["metadata"]["name"] == "inferencepools.inference.networking.k8s.io"
    assert crd.retain_on_delete


def _each_health_check_waits_for_its_pool(run: StackRun) -> None:
    pools = of_type(run, POOL)
    assert pools
    for pool in pools:
        name = pool.props["metadata"]["name"]
        policy = named(run, HEALTH_CHECK_POLICY, f"{name}-health")
        assert policy.props["spec"]["targetRef"]["name"] == name
        assert pool.urn in _explicit(policy)


def test_every_pool_health_check_waits_for_its_pool(stack_run: StackRun) -> None:
    _each_health_check_waits_for_its_pool(stack_run)


def test_every_pool_health_check_waits_for_its_pool_when_the_program_installs_the_crd(
    installed_crd: StackRun,
) -> None:
    _each_health_check_waits_for_its_pool(installed_crd)


def test_the_gateway_waits_for_the_proxy_only_subnet(stack_run: StackRun) -> None:
    [proxy_only] = [
        s for s in of_type(stack_run, SUBNET) if s.props.get("purpose") == "REGIONAL_MANAGED_PROXY"
    ]
    [gateway] = of_type(stack_run, GATEWAY)

    assert proxy_only.urn in _explicit(gateway)


def test_the_endpoint_pickers_and_bbr_wait_for_the_image_they_run(stack_run: StackRun) -> None:
    [image] = of_type(stack_run, IMAGE)
    ours = [d for d in of_type(stack_run, DEPLOYMENT) if not d.props["metadata"]["name"].startswith("vllm-")]

    names = {d.props["metadata"]["name"] for d in ours}
    assert len(names) == 3
    assert "body-based-router" in names
    assert all(name == "body-based-router" or name.endswith("-pool-epp") for name in names)
    for deployment in ours:
        assert image.urn in deployment.dependencies
        assert image.urn in deployment.property_dependencies["spec"]  # the digest-pinned ref feeds the spec


def test_every_resource_belongs_to_a_component(stack_run: StackRun) -> None:
    components = {r.urn for r in stack_run.resources if not r.custom}
    [platform] = [r for r in stack_run.resources if r.type == "gke-llm-gateway:index:Platform"]

    assert platform.parent is not None
    assert platform.parent.endswith(f"::gke-llm-gateway-{stack_run.stack}")
    for resource in stack_run.resources:
        if resource is not platform:
            assert resource.parent in components, f"{resource.urn} has no parent component"


def test_every_kubernetes_object_goes_through_the_clusters_provider(stack_run: StackRun) -> None:
    [provider] = [r for r in stack_run.resources if r.type == "pulumi:providers:kubernetes"]
    kubernetes = [r for r in stack_run.resources if r.custom and r.type.startswith("kubernetes:")]

    assert provider.props["clusterIdentifier"]
    assert kubernetes
    for resource in kubernetes:
        assert resource.provider is not None
        assert resource.provider.startswith(provider.urn + "::")


def test_no_component_gets_a_child_after_it_registered_its_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    # The engine takes register_outputs as the component's end: a child created afterwards (the
    # Gateway's routes once were) is outside what the component reported.
    closed: list[pulumi.ComponentResource] = []
    late: list[str] = []
    register_outputs = pulumi.ComponentResource.register_outputs
    resource_init = pulumi.Resource.__init__

    def closing(self: pulumi.ComponentResource, outputs: Any) -> None:
        closed.append(self)
        register_outputs(self, outputs)

    def watched(self: pulumi.Resource, t: str, name: str, *args: Any, **kwargs: Any) -> None:
        opts = kwargs.get("opts", args[2] if len(args) > 2 else None)
        parent = getattr(opts, "parent", None)
        if any(parent is component for component in closed):
            late.append(f"{t} {name}")
        resource_init(self, t, name, *args, **kwargs)

    monkeypatch.setattr(pulumi.ComponentResource, "register_outputs", closing)
    monkeypatch.setattr(pulumi.Resource, "__init__", watched)
    for stack in ("gpu", "tpu"):
        render_stack(stack)

    assert closed
    assert late == []
