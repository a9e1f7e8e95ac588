"""The review rules, one story per thing a reviewer would reject (and what they would let through)."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import jsonschema
import pytest

from policy import rules
from tests.infra.shared import SCHEMAS
from tests.policy.builders import (
    CLUSTER_TYPE,
    DIGEST,
    HEALTH_CHECK_TYPE,
    PINNED_IMAGE,
    POOL_TYPE,
    WORKLOAD_TYPES,
    container,
    deployment,
    health_check_policy,
    inference_pool,
    pod_spec,
    urn,
    workload,
)


def _read_only(value: Any) -> Any:
    """The inputs as the policy SDK hands them over: read-only mappings and non-list sequences."""
    if isinstance(value, dict):
        return MappingProxyType({key: _read_only(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_read_only(item) for item in value)
    return value


def _stack(*resources: tuple[str, str, dict[str, Any]], stack: str = "gpu") -> list[rules.StackResource]:
    return [
        rules.StackResource(type=t, name=name, urn=urn(stack, t, name), props=props)
        for t, name, props in resources
    ]


# --- containers running as root -----------------------------------------------------------------


def test_a_root_container_is_rejected() -> None:
    resource_type, props = deployment(pod_spec(container(security={"runAsUser": 0})))

    assert rules.containers_run_as_non_root(resource_type, props) == [
        "Deployment 'model-server': container containers[0] ('server') runs as root (runAsUser: 0)"
    ]


def test_a_container_with_no_security_context_may_run_as_root_and_is_rejected() -> None:
    resource_type, props = deployment(pod_spec(container(security={})))

    [violation] = rules.containers_run_as_non_root(resource_type, props)
    assert "may run as root" in violation
    assert "runAsNonRoot: true" in violation


def test_a_pod_level_run_as_non_root_covers_every_container() -> None:
    spec = pod_spec(
        container("vllm", security={}),
        container("sidecar", security={}),
        security={"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
    )

    assert rules.containers_run_as_non_root(*deployment(spec)) == []


def test_a_pod_level_root_user_condemns_every_container_that_does_not_override_it() -> None:
    spec = pod_spec(
        container("vllm", security={}),
        container("sidecar", security={"runAsUser": 1000}),
        security={"runAsUser": 0},
    )

    violations = rules.containers_run_as_non_root(*deployment(spec))

    assert len(violations) == 1
    assert "('vllm') runs as root" in violations[0]


def test_a_container_cannot_opt_out_of_the_pods_non_root_setting() -> None:
    spec = pod_spec(container(security={"runAsNonRoot": False}), security={"runAsNonRoot": True})

    [violation] = rules.containers_run_as_non_root(*deployment(spec))
    assert "runAsNonRoot: false" in violation


def test_a_non_zero_run_as_user_is_enough_even_as_the_float_pulumi_sends() -> None:
    as_mocked = deployment(pod_spec(container(security={"runAsUser": 1000})))
    as_sent_to_the_pack = deployment(pod_spec(container(security={"runAsUser": 1000.0})))

    assert rules.containers_run_as_non_root(*as_mocked) == []
    assert rules.containers_run_as_non_root(*as_sent_to_the_pack) == []


def test_root_is_root_even_when_run_as_non_root_claims_otherwise() -> None:
    resource_type, props = deployment(pod_spec(container(security={"runAsNonRoot": True, "runAsUser": 0.0})))

    [violation] = rules.containers_run_as_non_root(resource_type, props)
    assert "runs as root" in violation


def test_an_init_container_running_as_root_is_rejected_too() -> None:
    spec = pod_spec(container(), init=[container("download-model", security={})])

    [violation] = rules.containers_run_as_non_root(*deployment(spec))
    assert "initContainers[0] ('download-model')" in violation


@pytest.mark.parametrize("kind", sorted(WORKLOAD_TYPES))
def test_every_kind_of_workload_is_checked_where_its_pod_template_lives(kind: str) -> None:
    compliant = workload(kind, pod_spec(container()))
    rooted = workload(kind, pod_spec(container(security={"runAsUser": 0})))
    tagged = workload(kind, pod_spec(container(image="vllm/vllm-openai:latest")))
    greedy = workload(kind, pod_spec(container(requests={})))

    assert rules.check_resource(*compliant, stack="gpu") == []
    assert rules.containers_run_as_non_root(*rooted) != []
    assert rules.images_pinned_by_digest(*tagged) != []
    assert rules.containers_request_cpu_and_memory(*greedy) != []


def test_resources_that_run_no_pods_are_not_workload_checked() -> None:
    config_map = ("kubernetes:core/v1:ConfigMap", {"metadata": {"name": "epp-config"}, "data": {"a": "b"}})
    service = ("kubernetes:core/v1:Service", {"spec": {"ports": [{"port": 9002}]}})
    network = ("gcp:compute/network:Network", {"autoCreateSubnetworks": False})

    for resource_type, props in (config_map, service, network):
        assert rules.check_resource(resource_type, props, stack="prod") == []


def test_a_deployment_patch_with_a_partial_spec_is_left_alone() -> None:
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "epp:dev"}]}}}}

    assert rules.check_resource("kubernetes:apps/v1:DeploymentPatch", patch, stack="gpu") == []


def test_a_malformed_type_token_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'Deployment' is not a Pulumi type token"):
        rules.check_resource("Deployment", {}, stack="gpu")


# --- resource requests ------------------------------------------------------------------------------


def test_a_container_without_resource_requests_is_rejected() -> None:
    spec = pod_spec(container(requests={}))

    assert rules.containers_request_cpu_and_memory(*deployment(spec)) == [
        "Deployment 'model-server': container containers[0] ('server') has no resources.requests "
        "for cpu and memory"
    ]


def test_a_container_requesting_only_memory_is_rejected_for_cpu() -> None:
    spec = pod_spec(container(requests={"memory": "8Gi", "nvidia.com/gpu": 1}))

    [violation] = rules.containers_request_cpu_and_memory(*deployment(spec))
    assert violation.endswith("has no resources.requests for cpu")


def test_limits_alone_do_not_count_as_requests() -> None:
    server = container(requests={})
    server["resources"] = {"limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 1}}

    assert rules.containers_request_cpu_and_memory(*deployment(pod_spec(server))) != []


def test_a_container_requesting_cpu_and_memory_passes() -> None:
    spec = pod_spec(container(requests={"cpu": 4, "memory": "16Gi", "google.com/tpu": 1}))

    assert rules.containers_request_cpu_and_memory(*deployment(spec)) == []


# --- images pinned by digest -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        "vllm/vllm-openai:latest",
        "vllm/vllm-openai:v0.10.1",
        "vllm/vllm-openai",
        "vllm/vllm-openai@sha256:0123",
        f"vllm/vllm-openai@{DIGEST.upper()}",
    ],
)
def test_an_image_not_pinned_by_digest_is_rejected(image: str) -> None:
    [violation] = rules.images_pinned_by_digest(*deployment(pod_spec(container(image=image))))

    assert f"image {image!r} is not pinned by digest" in violation


@pytest.mark.parametrize("image", [PINNED_IMAGE, f"vllm/vllm-openai:v0.10.1@{DIGEST}"])
def test_a_digest_pinned_image_passes_with_or_without_a_tag(image: str) -> None:
    assert rules.images_pinned_by_digest(*deployment(pod_spec(container(image=image)))) == []


def test_a_container_without_an_image_is_rejected() -> None:
    server = container()
    del server["image"]

    [violation] = rules.images_pinned_by_digest(*deployment(pod_spec(server)))
    assert "names no image" in violation


# --- deletion protection on production --------------------------------------------------------------


def test_a_prod_cluster_without_deletion_protection_is_rejected() -> None:
    cluster = {"name": "llm-gateway", "location": "us-central1-a", "deletionProtection": False}

    assert rules.prod_clusters_have_deletion_protection(CLUSTER_TYPE, cluster, "gpu-prod") == [
        "GKE cluster 'llm-gateway' on production stack 'gpu-prod' must set deletionProtection: true"
    ]


def test_a_prod_cluster_relying_on_the_provider_default_is_rejected() -> None:
    cluster = {"name": "llm-gateway", "location": "us-central1-a"}

    assert rules.prod_clusters_have_deletion_protection(CLUSTER_TYPE, cluster, "Prod-EU") != []


def test_a_protected_prod_cluster_passes() -> None:
    cluster = {"name": "llm-gateway", "deletionProtection": True}

    assert rules.prod_clusters_have_deletion_protection(CLUSTER_TYPE, cluster, "production") == []


def test_a_dev_stack_may_delete_its_cluster() -> None:
    cluster = {"name": "llm-gateway", "deletionProtection": False}

    assert rules.prod_clusters_have_deletion_protection(CLUSTER_TYPE, cluster, "gpu") == []
    assert rules.prod_clusters_have_deletion_protection(CLUSTER_TYPE, cluster, "tpu") == []


# --- every InferencePool has a HealthCheckPolicy ------------------------------------------------


def test_an_inference_pool_without_a_health_check_policy_is_rejected() -> None:
    resources = _stack(
        (POOL_TYPE, "gemma-pool", inference_pool("gemma")),
        (POOL_TYPE, "phi3-pool", inference_pool("phi3")),
        (HEALTH_CHECK_TYPE, "phi3-health", health_check_policy("phi3")),
    )

    violations = rules.every_inference_pool_has_a_health_check(resources)

    assert violations == [
        rules.StackViolation(
            urn=resources[0].urn,
            message="InferencePool default/gemma has no HealthCheckPolicy whose targetRef names it "
            "(group inference.networking.k8s.io, kind InferencePool, name gemma)",
        )
    ]


def test_inference_pools_each_with_their_health_check_policy_pass() -> None:
    resources = _stack(
        (POOL_TYPE, "gemma-pool", inference_pool("gemma", namespace="llm")),
        (HEALTH_CHECK_TYPE, "gemma-health", health_check_policy("gemma", namespace="llm")),
        (POOL_TYPE, "phi3-pool", inference_pool("phi3")),
        (HEALTH_CHECK_TYPE, "phi3-health", health_check_policy("phi3")),
    )

    assert rules.every_inference_pool_has_a_health_check(resources) == []


@pytest.mark.parametrize(
    "policy",
    [
        health_check_policy("gemma", kind="Service", group=""),
        health_check_policy("gemma", group="inference.networking.x-k8s.io"),
        health_check_policy("gemma-v2"),
        health_check_policy("gemma", namespace="other"),
    ],
    ids=["targets-a-service", "wrong-api-group", "another-pool", "another-namespace"],
)
def test_a_health_check_policy_that_does_not_name_the_pool_does_not_count(policy: dict[str, Any]) -> None:
    resources = _stack((POOL_TYPE, "gemma-pool", inference_pool("gemma")), (HEALTH_CHECK_TYPE, "hc", policy))

    assert len(rules.every_inference_pool_has_a_health_check(resources)) == 1


# --- the rules as the pack runs them ----------------------------------------------------------------


def test_the_rules_read_the_read_only_proxies_the_policy_sdk_hands_over() -> None:
    rooted = deployment(pod_spec(container(image="vllm/vllm-openai:latest", security={}, requests={})))
    resource_type, props = rooted[0], _read_only(rooted[1])

    assert len(rules.check_resource(resource_type, props, stack="gpu")) == 3
    pool = _read_only(inference_pool("gemma"))
    assert len(rules.every_inference_pool_has_a_health_check(_stack((POOL_TYPE, "pool", pool)))) == 1


def test_a_whole_stack_reports_every_violation_against_its_resource() -> None:
    rooted_type, rooted = deployment(pod_spec(container(security={"runAsUser": 0})), name="vllm-gemma")
    resources = _stack(
        (rooted_type, "vllm-gemma", rooted),
        (POOL_TYPE, "gemma-pool", inference_pool("gemma")),
        (CLUSTER_TYPE, "cluster", {"name": "llm-gateway"}),
        stack="gpu-prod",
    )

    violations = rules.check_stack(resources, stack="gpu-prod")

    assert [v.urn for v in violations] == [resources[0].urn, resources[2].urn, resources[1].urn]


def test_the_stack_name_is_read_from_a_urn() -> None:
    assert rules.stack_of_urn(urn("gpu-prod", CLUSTER_TYPE, "cluster")) == "gpu-prod"
    with pytest.raises(ValueError, match="is not a Pulumi URN"):
        rules.stack_of_urn("gpu-prod/cluster")


def test_every_rule_has_a_unique_name_and_a_description_the_pack_can_register() -> None:
    every_rule = [(rule.name, rule.description) for rule in rules.RESOURCE_RULES] + [
        (rule.name, rule.description) for rule in rules.STACK_RULES
    ]
    names = [name for name, _ in every_rule]

    assert len(names) == len(set(names)) == 6
    assert all(name.replace("-", "").isalnum() and description for name, description in every_rule)




def test_the_pool_and_health_check_objects_these_tests_use_are_valid_custom_resources() -> None:
    checks = [
        ("inference.networking.k8s.io/inferencepool_v1.json", inference_pool("gemma", namespace="llm")),
        ("networking.gke.io/healthcheckpolicy_v1.json", health_check_policy("gemma", namespace="llm")),
    ]
    assert SCHEMAS.is_dir(), f"the shared CRD schemas are not at {SCHEMAS} (../shared beside the project)"
    for schema_file, resource in checks:
        schema = json.loads((SCHEMAS / schema_file).read_text())
        jsonschema.validate(resource, schema)


TPU_ROOT = {
    "runAsUser": 0,
    "runAsNonRoot": False,
    "privileged": False,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def _tpu_server(security: dict[str, Any], limits: dict[str, str] | None = None) -> dict[str, Any]:
    server = container(security=security)
    server["resources"]["limits"] = {"google.com/tpu": "1"} if limits is None else limits
    return server


def test_a_tpu_server_may_run_as_uid_0_when_it_holds_nothing_else() -> None:
    assert rules.containers_run_as_non_root(*deployment(pod_spec(_tpu_server(TPU_ROOT)))) == []


@pytest.mark.parametrize(
    "change",
    [
        {"privileged": True},
        {"allowPrivilegeEscalation": True},
        {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}},
        {"capabilities": {}},
    ],
)
def test_a_root_tpu_server_with_any_privilege_is_rejected(change: dict[str, Any]) -> None:
    [violation] = rules.containers_run_as_non_root(*deployment(pod_spec(_tpu_server(TPU_ROOT | change))))
    assert "runs as root" in violation


def test_root_without_tpu_chips_is_rejected() -> None:
    server = _tpu_server(TPU_ROOT, limits={"nvidia.com/gpu": "1"})
    [violation] = rules.containers_run_as_non_root(*deployment(pod_spec(server)))
    assert "runs as root" in violation
