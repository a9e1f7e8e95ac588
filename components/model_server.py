"""Model servers: per model, a vLLM Deployment on its accelerator and a Service in front of it.

GPU models request ``nvidia.com/gpu`` and select nodes by ``cloud.google.com/gke-accelerator``;
TPU models request ``google.com/tpu`` and select ``cloud.google.com/gke-tpu-accelerator`` plus
``cloud.google.com/gke-tpu-topology``. The startup probe allows 90 x 30 s for the model download
and compilation before liveness takes over. On shutdown a preStop sleep keeps the pod serving while
the load balancer and the EPP drop it, then the grace period lets the longest request the Gateway
allows finish before vLLM is killed. vLLM runs on a read-only root filesystem with no
capabilities and no privilege escalation: every path it writes (Hugging Face cache, home, /tmp,
/dev/shm) is an emptyDir. GPU servers run as uid 1000. TPU servers run as uid 0, unprivileged: the
TPU chips are the host's ``/dev/vfio/*`` nodes, root-owned in the container, and no documented GKE
setting hands their ownership to a pod's uid (docs/tpu-pod-security.md has the evidence); root
without capabilities opens them as their owner and gains nothing else.

The image: a stack file names a tag (``vllm/vllm-openai:v0.32.0``); at preview the program asks the
registry for the digest the tag points to (``docker.get_registry_image``) and deploys
``name:tag@sha256:...``, so the plan shows the exact image and a re-pushed tag shows up as a diff
instead of silently changing what runs. An already pinned reference is used as it is. With the
Docker Hub mirror (:mod:`components.mirror`) the pinned reference points into it.

Accelerator nodes may take minutes to appear (or never, without quota): by default ``pulumi up`` does
not wait for the model Deployments to become ready (``pulumi.com/skipAwait``); the pods stay Pending
until the autoscaler has a node for them. ``waitForModels: true`` makes the ``up`` wait, 60 minutes
at most per Deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_docker as docker
import pulumi_kubernetes as k8s

from components.config import ACCELERATORS, PINNED_IMAGE, ModelSpec, NodePool
from components.mirror import DockerHubMirror
from components.namespace import HF_TOKEN_SECRET_KEY
from components.podspec import (
    MODEL_LABEL,
    ROOT_UID,
    SERVING_LABEL,
    Fields,
    container_security_context,
    empty_dir,
    labels,
    pod_security_context,
    resources,
    secret_env,
)

VLLM_PORT = 8000
VLLM_UID = 1000
# Longer than the 600 s the regional Application Load Balancers (GKE's gke-l7-* Gateways) keep an
# idle connection to a backend: the balancer, not the pod, closes it.
LOAD_BALANCER_BACKEND_KEEP_ALIVE_SECONDS = 600
SERVER_KEEP_ALIVE_SECONDS = LOAD_BALANCER_BACKEND_KEEP_ALIVE_SECONDS + 20
STARTUP_PERIOD_SECONDS = 30
STARTUP_FAILURES = 90
"""Up to 45 minutes to download the weights and warm up before the pod is killed."""
ENDPOINT_DRAIN_SECONDS = 15
"""How long a terminating pod keeps serving new requests while it is removed from the endpoints."""
SKIP_AWAIT = "pulumi.com/skipAwait"
"""pulumi-kubernetes: create or update the object and move on, without waiting for it to be ready."""


@dataclass(frozen=True)
class ModelServerArgs:
    model: ModelSpec
    node_pool: NodePool
    namespace: pulumi.Input[str]
    hf_secret_name: str | None
    request_timeout_sec: int
    """The Gateway's per-request timeout: the longest generation a shutdown must let finish."""
    provider: k8s.Provider
    wait_for_ready: bool = False
    """``waitForModels``: hold the ``up`` until the Deployment is ready."""
    mirror: DockerHubMirror | None = None
    """Pull Docker Hub images through this Artifact Registry remote repository."""


def pinned_reference(image: str, digest: str) -> str:
    """``name:tag`` + ``sha256:...`` -> ``name:tag@sha256:...``; ValueError if the registry's answer is
    not a digest (the reference would not be pinned)."""
    reference = f"{image}@{digest}"
    if not PINNED_IMAGE.fullmatch(reference):
        raise ValueError(f"the registry answered {digest!r} for {image}, not a sha256 digest")
    return reference


def resolve_image(model: ModelSpec, mirror: DockerHubMirror | None = None) -> pulumi.Output[str]:
    """The model's image pinned by digest: as written when it already is, else its tag's digest, asked
    of the registry at preview (an invoke, so ``pulumi preview`` shows it); through ``mirror`` when
    the image is on Docker Hub (the mirror serves the same digests)."""
    mirrored = mirror.mirrored(model.image) if mirror is not None else None
    source: pulumi.Output[str] = mirrored if mirrored is not None else pulumi.Output.from_input(model.image)
    if model.image_pinned:
        return source
    found = docker.get_registry_image_output(name=model.image)
    return pulumi.Output.all(source, found.sha256_digest).apply(
        lambda parts: pinned_reference(parts[0], parts[1])
    )


def pod_labels(model: ModelSpec) -> dict[str, str]:
    """Labels of a model's pods: simple values only (the served name, with its slash, is not one)."""
    return labels("vllm", model.name, {MODEL_LABEL: model.name, SERVING_LABEL: "vllm"})


def termination_grace_seconds(request_timeout_sec: int) -> int:
    """The preStop drain, then the longest request the Gateway allows (on SIGTERM vLLM's HTTP
    server stops accepting connections and waits for the requests in flight)."""
    return request_timeout_sec + ENDPOINT_DRAIN_SECONDS


def security_contexts(model: ModelSpec) -> tuple[Fields, Fields]:
    """``(pod, container)`` security contexts: uid 1000 on GPUs; on TPUs uid 0, still unprivileged."""
    if ACCELERATORS[model.accelerator].family == "tpu":
        pod = {**pod_security_context(ROOT_UID), "runAsNonRoot": False}
        pod.pop("fsGroup")
        return pod, {**container_security_context(), "runAsNonRoot": False, "runAsUser": ROOT_UID}
    return pod_security_context(VLLM_UID), container_security_context()


def _node_placement(model: ModelSpec, pool: NodePool) -> tuple[dict[str, str], list[dict[str, str]]]:
    accelerator = ACCELERATORS[model.accelerator]
    selector: dict[str, str] = {accelerator.node_selector_key: str(model.accelerator)}
    if accelerator.family == "tpu" and pool.tpu_topology:
        selector["cloud.google.com/gke-tpu-topology"] = pool.tpu_topology
    tolerations = [{"key": accelerator.resource, "operator": "Exists", "effect": "NoSchedule"}]
    return selector, tolerations


def _container(model: ModelSpec, image: pulumi.Input[str], hf_secret_name: str | None) -> dict[str, Any]:
    accelerator = ACCELERATORS[model.accelerator]
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/home/vllm"},
        # The uid has no /etc/passwd entry: getpass.getuser() (torch inductor's default cache
        # dir) reads these before the password database, and would raise KeyError without them.
        {"name": "USER", "value": "vllm"},
        {"name": "LOGNAME", "value": "vllm"},
        {"name": "HF_HOME", "value": "/data/huggingface"},
        {"name": "XDG_CACHE_HOME", "value": "/data/cache"},
        {"name": "VLLM_CACHE_ROOT", "value": "/data/cache/vllm"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/data/cache/torchinductor"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
        # The Gateway's load balancer keeps an idle connection to a pod for 600 s, a fixed value;
        # vLLM's server (uvicorn) closes one after 5 s by default, and a request the balancer sends
        # as the pod closes it is a 502 for the client. The pod keeps its connections longer.
        {"name": "VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "value": str(SERVER_KEEP_ALIVE_SECONDS)},
    ]
    if hf_secret_name is not None:
        env.append(secret_env("HF_TOKEN", hf_secret_name, HF_TOKEN_SECRET_KEY))
    health = {"httpGet": {"path": "/health", "port": "http"}}
    return {
        "name": "vllm",
        "image": image,
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": [
            "--model",
            model.hugging_face_id,
            "--served-model-name",
            model.served_name,
            "--host",
            "0.0.0.0",
            "--port",
            str(VLLM_PORT),
            # usage.prompt_tokens_details.cached_tokens in answers: what the EPP's prefix index is
            # corrected by (--cached-tokens-feedback-rate); the flag only adds the field.
            "--enable-prompt-tokens-details",
            *model.args,
        ],
        "ports": [{"name": "http", "containerPort": VLLM_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": resources(model.resources, {accelerator.resource: str(model.accelerator_count)}),
        "securityContext": security_contexts(model)[1],
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(ENDPOINT_DRAIN_SECONDS)]}}},
        "startupProbe": health
        | {
            "periodSeconds": STARTUP_PERIOD_SECONDS,
            "failureThreshold": STARTUP_FAILURES,
            "timeoutSeconds": 5,
        },
        "livenessProbe": health | {"periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 5},
        "readinessProbe": health | {"periodSeconds": 5, "failureThreshold": 3, "timeoutSeconds": 5},
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "model-cache", "mountPath": "/data"},
            {"name": "home", "mountPath": "/home/vllm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


class ModelServer(pulumi.ComponentResource):
    """One model: its vLLM Deployment and Service."""

    deployment: k8s.apps.v1.Deployment
    service: k8s.core.v1.Service
    selector: dict[str, str]
    image_ref: pulumi.Output[str]

    def __init__(self, name: str, args: ModelServerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:ModelServer", name, None, opts)
        model = args.model
        object_name = f"vllm-{model.name}"
        self.selector = {MODEL_LABEL: model.name, SERVING_LABEL: "vllm"}
        node_selector, tolerations = _node_placement(model, args.node_pool)
        metadata: Fields = {"name": object_name, "namespace": args.namespace, "labels": pod_labels(model)}
        self.image_ref = resolve_image(model, args.mirror)
        deployment_metadata: Fields = metadata
        if not args.wait_for_ready:
            deployment_metadata = {**metadata, "annotations": {SKIP_AWAIT: "true"}}

        deployment_spec: Fields = {
            "selector": {"matchLabels": self.selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": pod_labels(model),
                    "annotations": {"llm-gateway.dev/served-model-name": model.served_name},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": security_contexts(model)[0],
                    "nodeSelector": node_selector,
                    "tolerations": tolerations,
                    "terminationGracePeriodSeconds": termination_grace_seconds(args.request_timeout_sec),
                    "containers": [_container(model, self.image_ref, args.hf_secret_name)],
                    "volumes": [
                        empty_dir("dshm", model.shm_size, memory=True),
                        empty_dir("model-cache", model.resources.ephemeral_storage),
                        empty_dir("home", "1Gi"),
                        empty_dir("tmp", "4Gi"),
                    ],
                },
            },
        }
        if model.autoscaling is None:
            deployment_spec["replicas"] = model.replicas
        # An autoscaled model's replicas are KEDA's (its HPA, or KEDA itself at zero): left out here,
        # and ignored if a former fixed count is still in the state, so an update never fights it.
        self.deployment = k8s.apps.v1.Deployment(
            object_name,
            metadata=deployment_metadata,
            spec=deployment_spec,
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=args.provider,
                custom_timeouts=pulumi.CustomTimeouts(create="60m", update="60m"),
                ignore_changes=["spec.replicas"] if model.autoscaling is not None else None,
            ),
        )
        service_spec: Fields = {
            "type": "ClusterIP",
            "selector": self.selector,
            "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": "http", "protocol": "TCP"}],
        }
        self.service = k8s.core.v1.Service(
            object_name,
            metadata=metadata,
            spec=service_spec,
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider),
        )
        self.register_outputs({"deployment": object_name, "service": object_name, "image": self.image_ref})
