"""The dependency graph, read from the recorded RegisterResource requests.

The orderings the engine must honour are explicit ``depends_on`` edges, not accidents of which
output feeds which input: the CRD before every InferencePool, each pool before its
HealthCheckPolicy, the proxy-only subnet before the Gateway, and the image before the EPP.
"""

from __future__ import annotations

from render import RegisteredResource, StackRun
from tests.infra.conftest import (
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


def test_every_inference_pool_waits_for_the_crd(stack_run: StackRun) -> None:
    [crd] = of_type(stack_run, CRD)
    pools = of_type(stack_run, POOL)

    assert len(pools) == 2
    for pool in pools:
        assert crd.urn in _explicit(pool)


def test_every_pool_health_check_waits_for_its_pool(stack_run: StackRun) -> None:
    for pool in of_type(stack_run, POOL):
        name = pool.props["metadata"]["name"]
        policy = named(stack_run, HEALTH_CHECK_POLICY, f"{name}-health")
        assert policy.props["spec"]["targetRef"]["name"] == name
        assert pool.urn in _explicit(policy)


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
