"""Kubernetes building blocks shared by every workload: labels, hardened security contexts, resources.

Every container this program runs is non-root, with a read-only root filesystem, no capabilities,
no privilege escalation and the RuntimeDefault seccomp profile (the namespace enforces the
``restricted`` Pod Security Standard, so a regression fails at admission, not in an audit).
"""

from __future__ import annotations

from typing import Any, TypeAlias

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
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": "pulumi",
    }
    return {**base, **(extra or {})}


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


def grpc_probe(port: int, service: str, period: int = 10, failures: int = 3) -> Fields:
    """A Kubernetes-native gRPC health probe (grpc.health.v1) for ``service``."""
    return {
        "grpc": {"port": port, "service": service},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def command_line(options: dict[str, object]) -> list[str]:
    """``{"--grpc-port": 9002, "--secure-serving": True}`` -> ``["--grpc-port", "9002", "--secure-serving"]``
    (flags in the order given; ``True`` is a flag without a value)."""
    return [
        part
        for flag, value in options.items()
        for part in ((flag,) if value is True else (flag, str(value)))
    ]


def ext_proc_container(
    name: str,
    image: Fields,
    options: dict[str, object],
    *,
    grpc_port: int,
    health_port: int,
    metrics_port: int,
    spec: Resources,
    command: list[str] | None = None,
    mounts: list[Fields] | None = None,
) -> Fields:
    """A container of our ext_proc image (EPP or BBR): its ports, gRPC probes, hardening and ``/tmp``.

    ``options`` are the command-line flags, in order (``--bind 0.0.0.0`` is appended so the servers
    listen on the pod's address, and ``--secure-serving`` because Google Cloud load balancers call
    ext_proc backends over HTTP/2 with TLS — the Services say ``appProtocol: HTTP2``); ``mounts``
    come before the ``/tmp`` scratch mount, which needs the
    pod to have the ``tmp`` volume of :func:`ext_proc_tmp_volume`.
    """
    container: dict[str, Any] = {"name": name, "image": image}
    if command is not None:
        container["command"] = command
    container |= {
        "args": command_line({**options, "--bind": "0.0.0.0", "--secure-serving": True}),
        "ports": [
            {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": health_port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"},
        ],
        "livenessProbe": grpc_probe(health_port, "liveness"),
        "readinessProbe": grpc_probe(health_port, "readiness", period=2),
        "resources": resources(spec),
        "securityContext": container_security_context(),
        "volumeMounts": [*(mounts or []), {"name": "tmp", "mountPath": "/tmp"}],
    }
    return container


def ext_proc_tmp_volume() -> Fields:
    """The ``tmp`` scratch volume an :func:`ext_proc_container` mounts at ``/tmp``."""
    return empty_dir("tmp", "64Mi")
