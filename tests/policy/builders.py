"""Kubernetes and GKE resource inputs as Pulumi hands them to a policy, for the policy tests."""

from __future__ import annotations

from typing import Any

DIGEST = "sha256:" + "0123456789abcdef" * 4
PINNED_IMAGE = f"us-central1-docker.pkg.dev/demo/gateway/epp@{DIGEST}"

WORKLOAD_TYPES = {
    "Deployment": "kubernetes:apps/v1:Deployment",
    "StatefulSet": "kubernetes:apps/v1:StatefulSet",
    "DaemonSet": "kubernetes:apps/v1:DaemonSet",
    "ReplicaSet": "kubernetes:apps/v1:ReplicaSet",
    "Job": "kubernetes:batch/v1:Job",
    "CronJob": "kubernetes:batch/v1:CronJob",
    "Pod": "kubernetes:core/v1:Pod",
    "Rollout": "kubernetes:argoproj.io/v1alpha1:Rollout",
}
POOL_TYPE = "kubernetes:inference.networking.k8s.io/v1:InferencePool"
HEALTH_CHECK_TYPE = "kubernetes:networking.gke.io/v1:HealthCheckPolicy"
CLUSTER_TYPE = "gcp:container/cluster:Cluster"


def container(
    name: str = "server",
    image: str = PINNED_IMAGE,
    security: dict[str, Any] | None = None,
    requests: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A compliant container unless told otherwise."""
    return {
        "name": name,
        "image": image,
        "securityContext": {"runAsNonRoot": True} if security is None else security,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"} if requests is None else requests},
    }


def pod_spec(
    *containers: dict[str, Any],
    init: list[dict[str, Any]] | None = None,
    security: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers) or [container()]}
    if init is not None:
        spec["initContainers"] = init
    if security is not None:
        spec["securityContext"] = security
    return spec


def workload(kind: str, spec: dict[str, Any], name: str = "model-server") -> tuple[str, dict[str, Any]]:
    """(type token, inputs) of a `kind` workload running `spec`, nested where that kind keeps it."""
    template = {"metadata": {"labels": {"app": name}}, "spec": spec}
    body: dict[str, Any]
    if kind == "Pod":
        body = spec
    elif kind == "CronJob":
        body = {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template}}}
    else:
        body = {"selector": {"matchLabels": {"app": name}}, "template": template}
    return WORKLOAD_TYPES[kind], {"metadata": {"name": name}, "spec": body}


def deployment(spec: dict[str, Any] | None = None, name: str = "model-server") -> tuple[str, dict[str, Any]]:
    return workload("Deployment", spec or pod_spec(), name)


def inference_pool(name: str, namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {
                "name": f"{name}-epp",
                "port": {"number": 9002},
                "failureMode": "FailClose",
            },
        },
    }


def health_check_policy(
    target: str,
    namespace: str | None = None,
    kind: str = "InferencePool",
    group: str = "inference.networking.k8s.io",
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": f"{target}-health"}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "networking.gke.io/v1",
        "kind": "HealthCheckPolicy",
        "metadata": metadata,
        "spec": {
            "default": {
                "config": {"type": "HTTP", "httpHealthCheck": {"requestPath": "/health", "port": 8000}},
            },
            "targetRef": {"group": group, "kind": kind, "name": target},
        },
    }


def urn(stack: str, resource_type: str, name: str) -> str:
    return f"urn:pulumi:{stack}::gke-llm-gateway::{resource_type}::{name}"
