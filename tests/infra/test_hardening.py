"""Review findings on the stacks: shutdown, runtime and node identity, health checks, previews."""

from __future__ import annotations

from render import RegisteredResource, StackRun, render_stack
from tests.infra.conftest import (
    CLUSTER,
    DEPLOYMENT,
    HEALTH_CHECK_POLICY,
    IMAGE,
    NODE_POOL,
    POOL,
    SERVICE,
    named,
    of_type,
    pod_spec,
)

BACKEND_POLICY = "kubernetes:networking.gke.io/v1:GCPBackendPolicy"
DISRUPTION_BUDGET = "kubernetes:policy/v1:PodDisruptionBudget"
IAM_MEMBER = "gcp:projects/iAMMember:IAMMember"


def vllm_deployments(run: StackRun) -> list[RegisteredResource]:
    found = [d for d in of_type(run, DEPLOYMENT) if d.props["metadata"]["name"].startswith("vllm-")]
    assert len(found) == 2
    return found


def test_a_vllm_pod_being_replaced_finishes_the_generations_it_has_started(stack_run: StackRun) -> None:
    [backend_policy, *_] = of_type(stack_run, BACKEND_POLICY)
    request_timeout = backend_policy.props["spec"]["default"]["timeoutSec"]

    for deployment in vllm_deployments(stack_run):
        pod = pod_spec(deployment)
        [container] = pod["containers"]
        drain = container["lifecycle"]["preStop"]["exec"]["command"]
        assert drain[0] == "sleep"
        drain_seconds = int(drain[1])
        assert drain_seconds >= 10, "the load balancer and the EPP need time to drop the endpoint"
        assert pod["terminationGracePeriodSeconds"] >= drain_seconds + request_timeout


def test_a_longer_gateway_timeout_gives_vllm_a_longer_grace_period() -> None:
    run = render_stack("gpu", {"gateway": {"requestTimeoutSec": 1800}})
    pod = pod_spec(named(run, DEPLOYMENT, "vllm-phi3"))

    assert pod["terminationGracePeriodSeconds"] > 1800


def test_vllm_can_name_its_user_and_compile_without_a_passwd_entry(stack_run: StackRun) -> None:
    for deployment in vllm_deployments(stack_run):
        [container] = pod_spec(deployment)["containers"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        mounts = [mount["mountPath"] for mount in container["volumeMounts"]]

        assert env["USER"] == "vllm"
        assert env["LOGNAME"] == "vllm"
        inductor_cache = env["TORCHINDUCTOR_CACHE_DIR"]
        assert any(inductor_cache.startswith(mount + "/") for mount in mounts), (
            f"{inductor_cache} is not on a writable volume (root filesystem is read-only)"
        )


def _explicit(resource: RegisteredResource) -> set[str]:
    implicit = {urn for urns in resource.property_dependencies.values() for urn in urns}
    return set(resource.dependencies) - implicit


def test_the_load_balancer_checks_each_endpoint_picker_like_the_bbr_over_grpc(stack_run: StackRun) -> None:
    bbr_check = named(stack_run, HEALTH_CHECK_POLICY, "body-based-router-health").props["spec"]["default"]
    pools = of_type(stack_run, POOL)
    assert len(pools) == 2

    for pool in pools:
        epp_name = pool.props["spec"]["endpointPickerRef"]["name"]
        service = named(stack_run, SERVICE, epp_name)
        policy = named(stack_run, HEALTH_CHECK_POLICY, f"{epp_name}-health")
        check = policy.props["spec"]["default"]["config"]

        assert policy.props["spec"]["targetRef"] == {"group": "", "kind": "Service", "name": epp_name}
        assert check["type"] == bbr_check["config"]["type"] == "GRPC"
        assert check["grpcHealthCheck"] == {
            "portSpecification": "USE_FIXED_PORT",
            "port": 9003,
            "grpcServiceName": "readiness",
        }
        assert service.urn in _explicit(policy)
        health_port = {p["name"]: p["port"] for p in service.props["spec"]["ports"]}["grpc-health"]
        assert health_port == 9003


def test_the_body_based_router_survives_a_restart_or_a_drained_node(gpu: StackRun) -> None:
    deployment = named(gpu, DEPLOYMENT, "body-based-router")
    spec = deployment.props["spec"]
    selector = spec["selector"]["matchLabels"]
    budget = named(gpu, DISRUPTION_BUDGET, "body-based-router").props["spec"]
    [spread] = pod_spec(deployment)["topologySpreadConstraints"]
    [container] = pod_spec(deployment)["containers"]

    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert budget == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"] == {"matchLabels": selector}
    assert container["resources"]["requests"]["cpu"] == "500m"


def _survives_losing_one_pod(run: StackRun, deployment_name: str) -> None:
    deployment = named(run, DEPLOYMENT, deployment_name)
    spec = deployment.props["spec"]
    selector = spec["selector"]["matchLabels"]
    [budget] = [b for b in of_type(run, DISRUPTION_BUDGET) if b.props["metadata"]["name"] == deployment_name]

    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    [spread] = pod_spec(deployment)["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["maxSkew"] == 1
    assert spread["labelSelector"]["matchLabels"] == selector
    assert budget.props["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()


def test_every_endpoint_picker_runs_active_active_and_survives_losing_a_replica(stack_run: StackRun) -> None:
    pools = of_type(stack_run, POOL)

    assert len(pools) == 2
    for pool in pools:
        _survives_losing_one_pod(stack_run, pool.props["spec"]["endpointPickerRef"]["name"])


def test_the_front_door_survives_losing_a_replica_too(stack_run: StackRun) -> None:
    _survives_losing_one_pod(stack_run, "body-based-router")


def test_more_picker_replicas_keep_the_same_guarantees() -> None:
    run = render_stack("gpu", {"routingMode": "unified-pool", "epp": {"replicas": 4}})

    _survives_losing_one_pod(run, "all-models-pool-epp")
    assert named(run, DEPLOYMENT, "all-models-pool-epp").props["spec"]["replicas"] == 4


def test_a_pull_request_preview_does_not_build_the_image(stack_run: StackRun) -> None:
    [image] = of_type(stack_run, IMAGE)

    assert image.props["buildOnPreview"] is False
    assert image.props["push"] is True


def test_no_node_boots_before_its_service_account_may_pull_images_and_write_logs(stack_run: StackRun) -> None:
    [cluster] = of_type(stack_run, CLUSTER)
    node_pools = of_type(stack_run, NODE_POOL)
    roles = of_type(stack_run, IAM_MEMBER)
    node_account = {pool.props["nodeConfig"]["serviceAccount"] for pool in node_pools}
    assert {r.props["role"] for r in roles} == {
        "roles/artifactregistry.reader",
        "roles/container.defaultNodeServiceAccount",  # GKE's least-privilege node role, not a legacy list
    }

    # The temporary default pool too: not the Compute Engine default service account.
    assert cluster.props["nodeConfig"] == {
        "serviceAccount": node_account.pop(),
        "oauthScopes": ["https://www.googleapis.com/auth/cloud-platform"],
    }
    assert not node_account, "every pool runs as the one node service account"
    for nodes in [cluster, *node_pools]:
        assert {role.urn for role in roles} <= set(nodes.dependencies), nodes.name


def test_the_load_balancer_limits_are_set_on_purpose(stack_run: StackRun) -> None:
    [extension] = of_type(stack_run, "kubernetes:networking.gke.io/v1:GCPRoutingExtension")
    [bbr] = extension.props["spec"]["extensionChains"][0]["extensions"]

    assert bbr["failOpen"] is False, "failing open would skip the API key check"
    assert bbr["timeout"] == "1s"  # per message; the CRD allows 10 ms to 10 s
    for backend_policy in of_type(stack_run, BACKEND_POLICY):
        default = backend_policy.props["spec"]["default"]
        assert default["timeoutSec"] == 600, "the backend service's 30 s default would cut long generations"
        assert default["connectionDraining"]["drainingTimeoutSec"] == 600
    for pool in of_type(stack_run, POOL):
        assert pool.props["spec"]["endpointPickerRef"]["failureMode"] == "FailClose"


def test_connection_draining_follows_the_request_timeout_up_to_its_ceiling() -> None:
    run = render_stack("tpu", {"gateway": {"requestTimeoutSec": 7200}})

    for backend_policy in of_type(run, BACKEND_POLICY):
        default = backend_policy.props["spec"]["default"]
        assert default["timeoutSec"] == 7200
        assert default["connectionDraining"]["drainingTimeoutSec"] == 3600
