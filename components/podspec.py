"""Kubernetes building blocks shared by every workload: labels, hardened security contexts, resources.

Every container this program runs is non-root, with a read-only root filesystem, no capabilities,
no privilege escalation and the RuntimeDefault seccomp profile (the namespace enforces the
``restricted`` Pod Security Standard, so a regression fails at admission, not in an audit).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import pulumi

from components.config import Resources

Fields: TypeAlias = Any
"""Kubernetes fields as plain camelCase dicts (what pulumi-kubernetes sends as-is). Typed ``Any``
because the SDK's TypedDicts cannot describe values that mix plain data and Outputs."""

PART_OF = "gke-llm-gateway"
MODEL_LABEL = "llm-gateway.dev/model"
"""Label on model-server pods; per-model InferencePools select on it (a short name, never a slash)."""
SERVING_LABEL = "llm-gateway.dev/serving"
"""Label on every model-server pod (value ``vllm``); the unified InferencePool selects on it."""
EPP_IMAGE_UID = 65532
"""The EPP image's user (distroless ``nonroot``)."""
ROOT_UID = 0
"""Only TPU model servers (see :mod:`components.model_server`); the policy pack allows it nowhere else."""


def labels(component: str, instance: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Recommended ``app.kubernetes.io`` labels, plus ``extra``."""
    base = {
        **pod_selector(component, instance),
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": "pulumi",
    }
    return {**base, **(extra or {})}


def pod_selector(component: str, instance: str) -> dict[str, str]:
    """The labels that pick out one instance's pods (a subset of :func:`labels`)."""
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/instance": instance}


def object_meta(name: str, namespace: Fields, component: str, instance: str) -> Fields:
    """Metadata of a namespaced object: its name, its namespace and :func:`labels`."""
    return {"name": name, "namespace": namespace, "labels": labels(component, instance)}


def pod_security_context(uid: int) -> Fields:
    """Pod-level: a fixed non-root user and group, RuntimeDefault seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Fields:
    """Container-level: nothing writable but mounted volumes, no capabilities, no escalation."""
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(spec: Resources, extended: dict[str, str] | None = None) -> Fields:
    """Requests equal to limits (predictable placement and no noisy neighbours), plus accelerators."""
    amounts = {
        "cpu": spec.cpu,
        "memory": spec.memory,
        "ephemeral-storage": spec.ephemeral_storage,
        **(extended or {}),
    }
    return {"requests": dict(amounts), "limits": dict(amounts)}


def empty_dir(name: str, size_limit: str | None = None, memory: bool = False) -> Fields:
    """A scratch volume (``memory=True`` for a tmpfs such as ``/dev/shm``)."""
    source: dict[str, Any] = {}
    if memory:
        source["medium"] = "Memory"
    if size_limit:
        source["sizeLimit"] = size_limit
    return {"name": name, "emptyDir": source}


def secret_file_volume(name: str, secret_name: pulumi.Input[str], key: str) -> Fields:
    """A volume holding one key of a Secret as a file of the same name, readable by owner and group
    only (0440: the pod's fsGroup)."""
    return {
        "name": name,
        "secret": {"secretName": secret_name, "items": [{"key": key, "path": key}], "defaultMode": 0o440},
    }


def secret_env(name: str, secret_name: pulumi.Input[str], key: str) -> Fields:
    """An environment variable set from one key of a Secret."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}


def grpc_probe(port: int, service: str, period: int = 10, failures: int = 3) -> Fields:
    """A Kubernetes-native gRPC health probe (grpc.health.v1) for ``service``."""
    return {
        "grpc": {"port": port, "service": service},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }
