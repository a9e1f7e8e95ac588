"""A first `pulumi up` on a fresh project, and a `pulumi destroy` that leaves nothing (issue 19).

Each test reads the mocked run's recorded resources and invokes: the cluster version checked
against what GKE offers (the mocked ``get_engine_versions``), the provider's dependencies, the
empty accelerator pools, the gated-model error, the destroy order and the digest resolution.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from components.cluster import service_account_id
from components.config import ConfigError
from components.mirror import docker_hub_name
from policy import rules
from render import RegisteredResource, StackRun, render_stack
from render.harness import ENGINE_VERSIONS_TOKEN, MOCK_ENGINE_VERSIONS, REGISTRY_IMAGE_TOKEN, mock_digest
from tests.infra.conftest import CLUSTER, DEPLOYMENT, GATEWAY, HTTP_ROUTE, NODE_POOL, POOL, named, of_type
from tests.infra.test_config_errors import _platform, _with_model

K8S_PROVIDER = "pulumi:providers:kubernetes"
DYNAMIC = "pulumi-python:dynamic:Resource"
SERVICE = "gcp:projects/service:Service"
SUBNET = "gcp:compute/subnetwork:Subnetwork"
VPC = "gcp:compute/network:Network"


def _versions(channel: str, default: str, latest: str) -> dict[str, Any]:
    versions = {key: dict(value) for key, value in MOCK_ENGINE_VERSIONS.items() if isinstance(value, dict)}
    versions["releaseChannelDefaultVersion"][channel] = default
    versions["releaseChannelLatestVersion"][channel] = latest
    return versions


def _edges(run: StackRun) -> dict[str, set[str]]:
    """URN -> every URN it must outlive on delete: its dependencies, its provider and its parent."""
    known = {r.urn for r in run.resources}
    edges: dict[str, set[str]] = {}
    for resource in run.resources:
        deps = set(resource.dependencies)
        if resource.provider:
            deps.add(resource.provider.rsplit("::", 1)[0])
        if resource.parent:
            deps.add(resource.parent)
        edges[resource.urn] = deps & known
    return edges


def _ancestors(run: StackRun, urn: str) -> set[str]:
    edges, seen, stack = _edges(run), set(), [urn]
    while stack:
        for dep in edges[stack.pop()]:
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return seen


def delete_order(run: StackRun) -> list[str]:
    """The order ``pulumi destroy`` deletes in: a resource only once nothing left depends on it
    (ties broken by reverse registration order, as the engine's order is free among them)."""
    edges = _edges(run)
    dependents: dict[str, int] = {urn: 0 for urn in edges}
    for deps in edges.values():
        for dep in deps:
            dependents[dep] += 1
    order: list[str] = []
    ready = [r.urn for r in run.resources if dependents[r.urn] == 0]
    while ready:
        urn = ready.pop()
        order.append(urn)
        for dep in edges[urn]:
            dependents[dep] -= 1
            if dependents[dep] == 0:
                ready.append(dep)
    assert len(order) == len(edges), "the dependency graph has a cycle"
    return order


def _one(run: StackRun, token: str, name_part: str = "") -> RegisteredResource:
    [found] = [r for r in of_type(run, token) if name_part in r.name]
    return found


# 1. The cluster version: a channel, and a minimum checked at preview.


def test_the_program_asks_gke_which_versions_the_zone_offers(stack_run: StackRun) -> None:
    [(_, args)] = [call for call in stack_run.calls if call[0] == ENGINE_VERSIONS_TOKEN]
    [cluster] = of_type(stack_run, CLUSTER)

    assert args["location"] == cluster.props["location"]
    assert args["project"] == cluster.props["project"]
    assert cluster.props.get("minMasterVersion") is None  # the channel's default already qualifies
    assert cluster.props["releaseChannel"] == {"channel": "REGULAR"}


def test_when_only_the_channels_newest_qualifies_the_cluster_asks_for_it_once() -> None:
    run = render_stack(
        "gpu",
        {"releaseChannel": "STABLE"},
        engine_versions=_versions("STABLE", "1.33.5-gke.2019000", "1.34.1-gke.1000"),
    )
    [cluster] = of_type(run, CLUSTER)

    assert cluster.props["minMasterVersion"] == "1.34.1-gke.1000"
    assert cluster.props["releaseChannel"] == {"channel": "STABLE"}
    assert "minMasterVersion" in cluster.ignore_changes  # a later preview upgrades nothing


def test_a_channel_that_offers_no_qualifying_version_fails_the_preview_naming_the_field() -> None:
    run = render_stack(
        "tpu",
        {"releaseChannel": "STABLE"},
        check=False,
        engine_versions=_versions("STABLE", "1.33.5-gke.2019000", "1.34.0-gke.1500000"),
    )

    assert isinstance(run.error, ConfigError)
    [message] = run.error.errors
    assert message.startswith("platform.releaseChannel: STABLE offers no GKE version >= 1.34.0-gke.1626000")
    assert "europe-west4-a" in message
    assert "RAPID" in message
    assert "inferencePoolCrd: install" in message
    assert run.resources == []  # checked before anything is registered


def test_with_the_crd_installed_nothing_is_required_of_the_version(installed_crd: StackRun) -> None:
    assert not [call for call in installed_crd.calls if call[0] == ENGINE_VERSIONS_TOKEN]
    [cluster] = of_type(installed_crd, CLUSTER)
    assert cluster.props.get("minMasterVersion") is None


# 2. Accelerator pools start empty; nothing in the cluster waits for them.


def test_accelerator_pools_start_empty_and_the_cpu_pool_does_not(stack_run: StackRun) -> None:
    counts = {pool.props["name"]: pool.props["initialNodeCount"] for pool in of_type(stack_run, NODE_POOL)}
    accelerated = {"gpu": "t4", "tpu": "v6e"}[stack_run.stack]

    assert counts == {"cpu": 1, accelerated: 0}
    for pool in of_type(stack_run, NODE_POOL):
        assert "initialNodeCount" in pool.ignore_changes  # the autoscaler owns the count afterwards
    pool = next(p for p in of_type(stack_run, NODE_POOL) if p.props["name"] == accelerated)
    assert pool.props["autoscaling"] == {"minNodeCount": 0, "maxNodeCount": 3}


def test_the_provider_and_every_object_in_the_cluster_depend_on_the_cpu_pool_only(
    stack_run: StackRun,
) -> None:
    pools = {pool.props["name"]: pool for pool in of_type(stack_run, NODE_POOL)}
    cpu = pools.pop("cpu")
    [provider] = of_type(stack_run, K8S_PROVIDER)

    assert cpu.urn in provider.dependencies
    accelerator_urns = {pool.urn for pool in pools.values()}
    kubernetes = [r for r in stack_run.resources if r.type.startswith("kubernetes:")]
    assert kubernetes
    for resource in [provider, *kubernetes]:
        assert not accelerator_urns & _ancestors(stack_run, resource.urn), resource.name


def test_model_deployments_do_not_hold_the_up_unless_asked(stack_run: StackRun) -> None:
    for model in {"gpu": ("gemma", "phi3"), "tpu": ("qwen", "phi3")}[stack_run.stack]:
        deployment = named(stack_run, DEPLOYMENT, f"vllm-{model}")
        assert deployment.props["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}
    epp = named(stack_run, DEPLOYMENT, "phi3-pool-epp")
    assert "pulumi.com/skipAwait" not in epp.props["metadata"].get("annotations", {})


def test_wait_for_models_makes_the_up_wait_for_them() -> None:
    run = render_stack("tpu", {"waitForModels": True})

    deployment = named(run, DEPLOYMENT, "vllm-qwen")
    assert "annotations" not in deployment.props["metadata"]


def test_spot_and_reservations_are_per_pool_options() -> None:
    cpu, t4 = _platform("gpu")["nodePools"]
    run = render_stack("gpu", {"nodePools": [{**cpu, "spot": True}, {**t4, "reservation": "t4-reserved"}]})
    pools = {pool.props["name"]: pool.props["nodeConfig"] for pool in of_type(run, NODE_POOL)}

    assert pools["cpu"]["spot"] is True
    assert "reservationAffinity" not in pools["cpu"]
    assert pools["t4"]["reservationAffinity"] == {
        "consumeReservationType": "SPECIFIC_RESERVATION",
        "key": "compute.googleapis.com/reservation-name",
        "values": ["t4-reserved"],
    }


# 3. A gated model needs the token, before any resource.


def test_a_gated_model_without_a_token_stops_the_program_naming_the_field() -> None:
    run = render_stack("gpu", check=False, placeholder_token=False)

    assert isinstance(run.error, ConfigError)
    [message] = run.error.errors
    assert message.startswith("hfToken: platform.models[0] (google/gemma-2b-it) is gated")
    assert "pulumi config set --secret hfToken" in message
    assert run.resources == []


def test_a_model_said_gated_needs_the_token_and_one_said_not_does_not() -> None:
    gated = render_stack("tpu", _with_model("tpu", 1, gated=True), check=False, placeholder_token=False)
    assert isinstance(gated.error, ConfigError)
    assert gated.error.errors[0].startswith("hfToken: platform.models[1] (microsoft/Phi-3-mini-4k-instruct)")

    not_gated = render_stack("gpu", _with_model("gpu", 0, gated=False), placeholder_token=False)
    assert of_type(not_gated, DEPLOYMENT)


# 4. `pulumi destroy`: the Gateway and routes first, NEGs cleaned before the subnets and the VPC.


def test_destroy_deletes_routes_and_gateway_then_cluster_then_negs_then_subnets_then_vpc(
    stack_run: StackRun,
) -> None:
    order = delete_order(stack_run)
    position = {urn: index for index, urn in enumerate(order)}
    routes = of_type(stack_run, HTTP_ROUTE)
    [gateway] = of_type(stack_run, GATEWAY)
    [cluster] = of_type(stack_run, CLUSTER)
    cleanup = _one(stack_run, DYNAMIC, "neg-cleanup")
    subnets = of_type(stack_run, SUBNET)
    [vpc] = of_type(stack_run, VPC)

    # Guaranteed by the graph, not by the tie-break: each is an ancestor of the one deleted before it.
    for route in routes:
        assert gateway.urn in _ancestors(stack_run, route.urn)
    assert cluster.urn in _ancestors(stack_run, gateway.urn)
    for pool in of_type(stack_run, POOL):
        assert cluster.urn in _ancestors(stack_run, pool.urn)
    assert cleanup.urn in cluster.dependencies
    for subnet in subnets:
        assert subnet.urn in cleanup.dependencies
        assert vpc.urn in subnet.dependencies
    # ... and so the delete order.
    assert max(position[r.urn] for r in routes) < position[gateway.urn] < position[cluster.urn]
    assert position[cluster.urn] < position[cleanup.urn] < min(position[s.urn] for s in subnets)
    assert max(position[s.urn] for s in subnets) < position[vpc.urn]
    assert cleanup.props["network"] == vpc.props["name"]


def test_subnets_and_the_vpc_have_long_delete_timeouts(stack_run: StackRun) -> None:
    for resource in [*of_type(stack_run, SUBNET), *of_type(stack_run, VPC), *of_type(stack_run, CLUSTER)]:
        assert resource.delete_timeout == "45m", resource.name


# 5. Images: a tag in the stack file, a digest in the cluster.


MIRRORS = {
    "gpu": "us-central1-docker.pkg.dev/my-gcp-project/docker-hub",
    "tpu": "europe-west4-docker.pkg.dev/my-gcp-project/docker-hub",
}


def test_each_model_image_tag_is_resolved_to_a_digest_at_preview(stack_run: StackRun) -> None:
    asked = [args["name"] for token, args in stack_run.calls if token == REGISTRY_IMAGE_TOKEN]
    tag = {"gpu": "vllm/vllm-openai:v0.32.0", "tpu": "vllm/vllm-tpu:v0.32.0"}[stack_run.stack]
    pinned = f"{MIRRORS[stack_run.stack]}/{tag}@{mock_digest(tag)}"  # the Docker Hub digest, via the mirror
    repositories = of_type(stack_run, "gcp:artifactregistry/repository:Repository")
    [mirror] = [r for r in repositories if "hub" in r.name]

    assert asked == [tag, tag]  # one lookup per model, of the Docker Hub tag
    for deployment in of_type(stack_run, DEPLOYMENT):
        [container] = deployment.props["spec"]["template"]["spec"]["containers"]
        if deployment.name.startswith("vllm-"):
            assert container["image"] == pinned
            assert mirror.urn in deployment.dependencies  # the mirror exists before anything pulls
    assert set(stack_run.outputs["modelImages"].values()) == {pinned}
    assert mirror.props["mode"] == "REMOTE_REPOSITORY"
    assert mirror.props["remoteRepositoryConfig"]["dockerRepository"] == {"publicRepository": "DOCKER_HUB"}


def test_the_policy_rule_checks_the_resolved_reference(stack_run: StackRun) -> None:
    deployment = next(d for d in of_type(stack_run, DEPLOYMENT) if d.name.startswith("vllm-"))
    assert rules.images_pinned_by_digest(DEPLOYMENT, deployment.props) == []

    [container] = deployment.props["spec"]["template"]["spec"]["containers"]
    unresolved = {**container, "image": container["image"].split("@")[0]}
    props = {"spec": {"template": {"spec": {"containers": [unresolved]}}}}
    [violation] = rules.images_pinned_by_digest(DEPLOYMENT, props)
    assert "is not pinned by digest" in violation


def test_an_already_pinned_image_is_used_as_written() -> None:
    pinned = "vllm/vllm-tpu@sha256:" + "1" * 64
    run = render_stack("tpu", {**_with_model("tpu", 0, image=pinned), "dockerHubMirror": False})

    assert [args["name"] for token, args in run.calls if token == REGISTRY_IMAGE_TOKEN] == [
        "vllm/vllm-tpu:v0.32.0"
    ]
    assert run.outputs["modelImages"]["qwen"] == pinned
    assert run.outputs["modelImages"]["phi3"].startswith("vllm/vllm-tpu:v0.32.0@sha256:")  # no mirror


@pytest.mark.parametrize(
    ("image", "on_docker_hub"),
    [
        ("vllm/vllm-openai:v0.32.0", "vllm/vllm-openai:v0.32.0"),
        ("ubuntu:24.04", "library/ubuntu:24.04"),
        ("us-docker.pkg.dev/p/r/vllm:v1", None),
        ("localhost:5000/vllm:v1", None),
        ("localhost/vllm:v1", None),
    ],
)
def test_only_docker_hub_images_go_through_the_mirror(image: str, on_docker_hub: str | None) -> None:
    assert docker_hub_name(image) == on_docker_hub


# 6. Cheap defaults: APIs, private nodes with NAT, the node role, a valid service account id.


def test_required_apis_are_enabled_kept_on_destroy_and_awaited_by_every_google_resource(
    stack_run: StackRun,
) -> None:
    services = of_type(stack_run, SERVICE)
    names = {s.props["service"] for s in services}

    assert {"compute.googleapis.com", "container.googleapis.com", "networkservices.googleapis.com"} <= names
    assert all(s.props["disableOnDestroy"] is False for s in services)
    google = [r for r in stack_run.resources if r.type.startswith("gcp:") and r.type != SERVICE]
    assert google
    for resource in google:
        assert {s.urn for s in services} <= set(resource.dependencies), resource.name


def test_nodes_are_private_and_reach_out_through_cloud_nat(stack_run: StackRun) -> None:
    [cluster] = of_type(stack_run, CLUSTER)
    [nat] = of_type(stack_run, "gcp:compute/routerNat:RouterNat")

    assert cluster.props["privateClusterConfig"]["enablePrivateNodes"] is True
    assert nat.props["sourceSubnetworkIpRangesToNat"] == "ALL_SUBNETWORKS_ALL_IP_RANGES"


def test_public_nodes_on_request_get_no_nat() -> None:
    run = render_stack("tpu", {"privateNodes": False})
    [cluster] = of_type(run, CLUSTER)
    assert "privateClusterConfig" not in cluster.props
    assert of_type(run, "gcp:compute/routerNat:RouterNat") == []


@pytest.mark.parametrize(
    "cluster_name",
    ["llm-gateway-gpu", "a" * 40, "abcdefghijklmnopqrstuvwxy-zz", "x" * 20 + "-" + "y" * 18],
)
def test_the_node_service_account_id_is_valid_for_any_cluster_name(cluster_name: str) -> None:
    account = service_account_id(cluster_name)

    assert re.fullmatch(r"[a-z][-a-z0-9]{4,28}[a-z0-9]", account), account
    assert account != service_account_id(cluster_name + "b")  # a longer name never collides


# 7. TPU servers: uid 0 but nothing else; the namespace level follows (docs/tpu-pod-security.md).


def test_tpu_servers_run_as_root_without_privilege_and_the_namespace_says_baseline(
    stack_run: StackRun,
) -> None:
    [namespace] = of_type(stack_run, "kubernetes:core/v1:Namespace")
    labels = namespace.props["metadata"]["labels"]
    on_tpu = stack_run.stack == "tpu"

    assert labels["pod-security.kubernetes.io/enforce"] == ("baseline" if on_tpu else "restricted")
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"
    for deployment in (d for d in of_type(stack_run, DEPLOYMENT) if d.name.startswith("vllm-")):
        [container] = deployment.props["spec"]["template"]["spec"]["containers"]
        context = container["securityContext"]
        assert (context.get("runAsUser") == 0) is on_tpu
        assert context["privileged"] is False
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert rules.containers_run_as_non_root(DEPLOYMENT, deployment.props) == []
