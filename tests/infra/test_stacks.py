"""Each committed stack builds the whole platform on the right hardware, hardened by default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from epp.contract import BASE_MODEL_HEADER

from components.model_server import LOAD_BALANCER_BACKEND_KEEP_ALIVE_SECONDS
from render import StackRun
from tests.infra.conftest import (
    CLUSTER,
    DEPLOYMENT,
    HTTP_ROUTE,
    NODE_POOL,
    SERVICE,
    SUBNET,
    gcp_named,
    named,
    of_type,
    pod_spec,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_stack_serves_gemma_and_phi3_on_one_t4_each_in_us_central1_a(gpu: StackRun) -> None:
    [cluster] = of_type(gpu, CLUSTER)
    assert cluster.props["location"] == "us-central1-a"
    for model, served in [("gemma", "google/gemma-2b-it"), ("phi3", "microsoft/Phi-3-mini-4k-instruct")]:
        pod = pod_spec(named(gpu, DEPLOYMENT, f"vllm-{model}"))
        [container] = pod["containers"]
        assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert container["args"][container["args"].index("--served-model-name") + 1] == served
        # Answers carry usage.prompt_tokens_details.cached_tokens, for the EPP's prefix index.
        assert "--enable-prompt-tokens-details" in container["args"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert named(gpu, DEPLOYMENT, f"vllm-{model}").props["spec"]["replicas"] == 1


def test_vllm_keeps_idle_connections_longer_than_the_load_balancer_so_it_never_closes_one_under_it(
    stack_run: StackRun,
) -> None:
    """The Gateway's balancer reuses an idle backend connection for up to 600 s (fixed); uvicorn's
    default 5 s would close it first, and a request sent onto the closing connection is a 502."""
    servers = [d for d in of_type(stack_run, DEPLOYMENT) if d.props["metadata"]["name"].startswith("vllm-")]
    assert servers
    for deployment in servers:
        [container] = pod_spec(deployment)["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert int(env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]) > LOAD_BALANCER_BACKEND_KEEP_ALIVE_SECONDS


def test_the_gpu_pool_is_n1_standard_4_with_a_t4_its_driver_and_the_gpu_taint(gpu: StackRun) -> None:
    pool = gcp_named(gpu, NODE_POOL, "t4")
    node = pool.props["nodeConfig"]
    [accelerator] = node["guestAccelerators"]

    assert node["machineType"] == "n1-standard-4"
    assert accelerator["type"] == "nvidia-tesla-t4"
    assert accelerator["count"] == 1
    assert accelerator["gpuDriverInstallationConfig"]["gpuDriverVersion"] == "LATEST"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"} in node["taints"]
    assert pool.props["autoscaling"]["minNodeCount"] == 0  # scale-to-zero is possible


def test_the_tpu_stack_puts_qwen_on_a_v6e_node_with_google_com_tpu(tpu: StackRun) -> None:
    [cluster] = of_type(tpu, CLUSTER)
    assert cluster.props["location"] == "europe-west4-a"
    for model in ("qwen", "phi3"):
        pod = pod_spec(named(tpu, DEPLOYMENT, f"vllm-{model}"))
        [container] = pod["containers"]
        assert pod["nodeSelector"] == {
            "cloud.google.com/gke-tpu-accelerator": "tpu-v6e-slice",
            "cloud.google.com/gke-tpu-topology": "1x1",
        }
        assert container["resources"]["limits"]["google.com/tpu"] == "1"
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
        # The tag, resolved, pulled through the stack's Docker Hub mirror.
        assert container["image"].startswith(
            "europe-west4-docker.pkg.dev/my-gcp-project/docker-hub/vllm/vllm-tpu:v0.32.0@sha256:"
        )


def test_the_tpu_pool_is_a_single_host_v6e_slice(tpu: StackRun) -> None:
    pool = gcp_named(tpu, NODE_POOL, "v6e")
    node = pool.props["nodeConfig"]

    assert node["machineType"] == "ct6e-standard-1t"
    assert "guestAccelerators" not in node  # TPUs come with the machine type
    assert {"key": "google.com/tpu", "value": "present", "effect": "NO_SCHEDULE"} in node["taints"]
    assert "placementPolicy" not in pool.props  # single host: no multi-host placement


def test_the_cluster_has_the_gateway_api_workload_identity_and_no_default_pool(stack_run: StackRun) -> None:
    [cluster] = of_type(stack_run, CLUSTER)
    props = cluster.props

    assert props["gatewayApiConfig"] == {"channel": "CHANNEL_STANDARD"}
    assert props["workloadIdentityConfig"] == {"workloadPool": "my-gcp-project.svc.id.goog"}
    assert props["releaseChannel"]["channel"] == "REGULAR"
    assert props["removeDefaultNodePool"] is True
    untainted = [
        p.props["name"] for p in of_type(stack_run, NODE_POOL) if "taints" not in p.props["nodeConfig"]
    ]
    assert untainted == ["cpu"]  # where the gateway's own workloads (EPPs, BBR) land


def test_the_load_balancer_gets_a_regional_managed_proxy_subnet(stack_run: StackRun) -> None:
    [proxy_only] = [s for s in of_type(stack_run, SUBNET) if s.props.get("purpose")]

    assert proxy_only.props["purpose"] == "REGIONAL_MANAGED_PROXY"
    assert proxy_only.props["role"] == "ACTIVE"


def test_a_model_server_gets_45_minutes_to_download_then_is_health_checked(gpu: StackRun) -> None:
    [container] = pod_spec(named(gpu, DEPLOYMENT, "vllm-gemma"))["containers"]
    startup = container["startupProbe"]

    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] == 45 * 60
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_every_container_is_non_root_read_only_capability_free_and_sized(stack_run: StackRun) -> None:
    deployments = of_type(stack_run, DEPLOYMENT)
    assert len(deployments) == 5  # two model servers, two EPPs, BBR

    for deployment in deployments:
        pod = pod_spec(deployment)
        on_tpu = "google.com/tpu" in pod["containers"][0]["resources"]["limits"]
        # TPU model servers: uid 0 to open the root-owned /dev/vfio nodes, and nothing else.
        assert pod["securityContext"]["runAsNonRoot"] is not on_tpu
        assert (pod["securityContext"]["runAsUser"] == 0) is on_tpu
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["privileged"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
            assert "@sha256:" in container["image"]


def test_each_model_has_a_route_matching_its_served_name_exactly(gpu: StackRun) -> None:
    for pool, served in [
        ("gemma-pool", "google/gemma-2b-it"),
        ("phi3-pool", "microsoft/Phi-3-mini-4k-instruct"),
    ]:
        [rule] = named(gpu, HTTP_ROUTE, f"{pool}-route").props["spec"]["rules"]
        # Only the API's own paths reach a pool (/v1/models is the BBR's to answer).
        assert rule["matches"] == [
            {"path": {"type": "Exact", "value": path},
             "headers": [{"type": "Exact", "name": BASE_MODEL_HEADER, "value": served}]}
            for path in ("/v1/completions", "/v1/chat/completions")
        ]
        assert rule["backendRefs"] == [
            {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": pool}
        ]


def test_each_pool_selects_only_its_models_pods(gpu: StackRun) -> None:
    pool = named(gpu, "kubernetes:inference.networking.k8s.io/v1:InferencePool", "gemma-pool").props["spec"]
    gemma_pod_labels = named(gpu, DEPLOYMENT, "vllm-gemma").props["spec"]["template"]["metadata"]["labels"]
    phi3_pod_labels = named(gpu, DEPLOYMENT, "vllm-phi3").props["spec"]["template"]["metadata"]["labels"]

    selector = pool["selector"]["matchLabels"]
    assert selector.items() <= gemma_pod_labels.items()
    assert not selector.items() <= phi3_pod_labels.items()
    assert pool["targetPorts"] == [{"number": 8000}]
    assert pool["endpointPickerRef"] == {
        "group": "",
        "kind": "Service",
        "name": "gemma-pool-epp",
        "port": {"number": 9002},
        "failureMode": "FailClose",
    }
    assert all("/" not in value for value in gemma_pod_labels.values())


def test_the_epp_watches_its_own_pool_with_the_contract_command_line(gpu: StackRun) -> None:
    deployment = named(gpu, DEPLOYMENT, "gemma-pool-epp")
    [container] = pod_spec(deployment)["containers"]
    args = container["args"]

    assert args[: args.index("--bind")] == [
        "--pool-name", "gemma-pool",
        "--pool-namespace", "llm-gateway",
        "--config-file", "/config/epp.yaml",
        "--grpc-port", "9002",
        "--health-port", "9003",
        "--metrics-port", "9090",
        "--pool-models", "google/gemma-2b-it",  # scaled to zero it answers 503, not 404
        "--replicas", "2",  # as many as the Deployment runs: a prefix new to one goes home
        # ... and the two tell each other their picks (epp.peers)
        "--peers", "gemma-pool-epp-peers.llm-gateway.svc.cluster.local.:9006",
        "--peer-port", "9006",
        "--peer-key-file", "/etc/epp-peers/key",
    ]  # fmt: skip
    assert deployment.props["spec"]["replicas"] == 2
    assert container["readinessProbe"]["grpc"] == {"port": 9003, "service": "readiness"}
    assert container["livenessProbe"]["grpc"] == {"port": 9003, "service": "liveness"}
    assert pod_spec(deployment)["securityContext"]["runAsUser"] == 65532
    assert pod_spec(deployment)["serviceAccountName"] == "gemma-pool-epp"


def test_the_epp_replicas_reach_each_other_through_a_headless_service_with_a_secret_key_and_hash_seed(
    stack_run: StackRun,
) -> None:
    epps = [r for r in of_type(stack_run, DEPLOYMENT) if r.name.endswith("-pool-epp")]
    assert len(epps) == 2  # a pool per model
    for deployment in epps:
        epp = deployment.name
        spec = pod_spec(deployment)
        [container] = spec["containers"]
        selector = deployment.props["spec"]["selector"]["matchLabels"]
        # A headless Service over exactly the EPP's pods, with their UDP peer port.
        service = named(stack_run, SERVICE, f"{epp}-peers").props["spec"]
        assert service["clusterIP"] == "None"
        assert service["publishNotReadyAddresses"] is True  # a starting replica learns before it serves
        assert service["selector"] == selector
        assert service["ports"] == [{"name": "peers", "port": 9006, "targetPort": "peers", "protocol": "UDP"}]
        assert {"name": "peers", "containerPort": 9006, "protocol": "UDP"} in container["ports"]
        # The key is a file of a Secret, read-only; the hash seed comes from the same Secret.
        secret = named(stack_run, "kubernetes:core/v1:Secret", f"{epp}-peers")
        assert set(secret.props["stringData"]) == {"key", "hash-seed"}
        assert "stringData" in secret.secret_paths  # secret in the state, both values
        assert len(secret.props["stringData"]["key"]) >= 32
        assert 1 <= int(secret.props["stringData"]["hash-seed"]) < 2**32
        volume = next(v for v in spec["volumes"] if v["name"] == "peer-key")
        assert volume["secret"]["secretName"] == f"{epp}-peers"
        mount = {"name": "peer-key", "mountPath": "/etc/epp-peers", "readOnly": True}
        assert mount in container["volumeMounts"]
        assert container["env"] == [{"name": "PYTHONHASHSEED", "valueFrom": {
            "secretKeyRef": {"name": f"{epp}-peers", "key": "hash-seed"}}}]


def test_the_epp_may_only_read_pods_and_inference_pools(gpu: StackRun) -> None:
    rules = named(gpu, "kubernetes:rbac.authorization.k8s.io/v1:Role", "gemma-pool-epp").props["rules"]

    read_only = ["get", "list", "watch"]
    assert rules == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": read_only},
        {"apiGroups": ["inference.networking.k8s.io"], "resources": ["inferencepools"], "verbs": read_only},
    ]


def test_the_epp_config_map_holds_the_shipped_default_profile(gpu: StackRun) -> None:
    data = named(gpu, "kubernetes:core/v1:ConfigMap", "gemma-pool-epp-config").props["data"]
    shipped = (REPO_ROOT / "epp" / "src" / "epp" / "profiles" / "default.yaml").read_text(encoding="utf-8")

    assert data == {"epp.yaml": shipped}
    assert yaml.safe_load(data["epp.yaml"])["kind"] == "EndpointPickerConfig"


def test_bbr_knows_every_served_model_and_hooks_into_the_gateway_full_duplex(tpu: StackRun) -> None:
    [container] = pod_spec(named(tpu, DEPLOYMENT, "body-based-router"))["containers"]
    extension = named(tpu, "kubernetes:networking.gke.io/v1:GCPRoutingExtension", "body-based-router")
    [chain] = extension.props["spec"]["extensionChains"]
    [hook] = chain["extensions"]

    assert container["command"] == ["bbr"]
    served = container["args"][container["args"].index("--served-models") + 1]
    assert served.split(",") == ["Qwen/Qwen2.5-3B-Instruct", "microsoft/Phi-3-mini-4k-instruct"]
    assert extension.props["spec"]["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "llm-gateway"}
    ]
    assert hook["requestBodySendMode"] == "FullDuplexStreamed"
    assert hook["backendRef"] == {"group": "", "kind": "Service", "name": "body-based-router", "port": 9004}
    health = named(tpu, "kubernetes:networking.gke.io/v1:HealthCheckPolicy", "body-based-router-health")
    assert health.props["spec"]["default"]["config"]["type"] == "GRPC"


@pytest.mark.parametrize(("deployment", "service"), [
    ("gemma-pool-epp", "gemma-pool-epp"), ("body-based-router", "body-based-router"),
])  # fmt: skip
def test_the_load_balancer_reaches_the_epp_and_bbr_over_http2_with_tls(
    gpu: StackRun, deployment: str, service: str
) -> None:
    # Google Cloud load balancers speak TLS to an HTTP2 backend (cleartext would be H2C).
    [container] = pod_spec(named(gpu, DEPLOYMENT, deployment))["containers"]
    [grpc_port, *_] = named(gpu, SERVICE, service).props["spec"]["ports"]
    assert grpc_port["appProtocol"] == "HTTP2"
    assert "--secure-serving" in container["args"]


def test_each_pool_gets_an_http_health_check_and_a_long_backend_timeout(gpu: StackRun) -> None:
    health = named(gpu, "kubernetes:networking.gke.io/v1:HealthCheckPolicy", "gemma-pool-health").props[
        "spec"
    ]
    backend = named(gpu, "kubernetes:networking.gke.io/v1:GCPBackendPolicy", "gemma-pool-backend").props[
        "spec"
    ]
    target = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "gemma-pool"}

    assert health["targetRef"] == target
    assert health["default"]["config"]["httpHealthCheck"]["requestPath"] == "/health"
    assert health["default"]["config"]["httpHealthCheck"]["port"] == 8000
    assert backend["targetRef"] == target
    assert backend["default"]["timeoutSec"] >= 300


def test_the_outputs_give_the_address_a_curl_per_model_the_image_and_a_secret_kubeconfig(
    gpu: StackRun,
) -> None:
    outputs = gpu.outputs

    assert outputs["gatewayAddress"] == "203.0.113.20"
    assert set(outputs["servedModels"]) == {"google/gemma-2b-it", "microsoft/Phi-3-mini-4k-instruct"}
    curl = outputs["servedModels"]["google/gemma-2b-it"]
    assert curl.startswith("curl -sS http://203.0.113.20/v1/chat/completions ")
    assert '"model": "google/gemma-2b-it"' in curl
    assert outputs["imageRef"].startswith("us-central1-docker.pkg.dev/my-gcp-project/llm-gateway/epp:")
    assert "@sha256:" in outputs["imageRef"]
    assert "gke-gcloud-auth-plugin" in outputs["kubeconfig"]
    assert gpu.secret_outputs == {"kubeconfig"}
