"""ExtProcService: one ext_proc server of our image (a pool's EPP, the BBR) as the load balancer reaches it.

Both are built here, the same way: a Deployment of the digest-pinned image (an explicit dependency
on its build) running the command line its settings render (``epp.settings``: ports, ``--bind
0.0.0.0`` so it listens on the pod's address, ``--secure-serving`` because Google Cloud load
balancers call ext_proc backends over HTTP/2 with TLS); a ClusterIP Service with the ext_proc port
(``appProtocol: HTTP2``), the gRPC health port and the metrics port; a PodDisruptionBudget; and the
load balancer's GRPC HealthCheckPolicy on the plaintext health port, created after the Service. The
replicas are spread over nodes and rolled one surge pod at a time (``components.availability``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s
from epp.settings import ServerSettings

from components.availability import ROLLING_UPDATE, keep_one_running, spread_over_nodes
from components.config import Resources
from components.podspec import (
    EPP_IMAGE_UID,
    Fields,
    container_security_context,
    empty_dir,
    grpc_probe,
    labels,
    object_meta,
    pod_security_context,
    pod_selector,
    resources,
)

EXT_PROC_APP_PROTOCOL = "HTTP2"
"""HTTP/2 with TLS: what a Google Cloud load balancer speaks to an ext_proc backend (the commands
run with ``--secure-serving``; cleartext would be H2C)."""
EXT_PROC_PORT_NAME, HEALTH_PORT_NAME, METRICS_PORT_NAME = "grpc-ext-proc", "grpc-health", "metrics"
TMP_VOLUME = "tmp"


READINESS_SERVICE = "readiness"
"""The grpc.health.v1 service name our EPP and BBR report readiness under."""


def grpc_health_check_policy(
    service_name: str,
    port: int,
    metadata: Fields,
    service: pulumi.Resource,
    opts: pulumi.ResourceOptions,
) -> k8s.apiextensions.CustomResource:
    """A GRPC HealthCheckPolicy for the ext_proc Service ``service_name``, created after it."""
    return k8s.apiextensions.CustomResource(
        metadata["name"],
        api_version="networking.gke.io/v1",
        kind="HealthCheckPolicy",
        metadata=metadata,
        spec={
            "targetRef": {"group": "", "kind": "Service", "name": service_name},
            "default": {
                "config": {
                    "type": "GRPC",
                    "grpcHealthCheck": {
                        "portSpecification": "USE_FIXED_PORT",
                        "port": port,
                        "grpcServiceName": READINESS_SERVICE,
                    },
                },
            },
        },
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[service])),
    )


def ext_proc_container(
    command: ServerSettings,
    image: Fields,
    spec: Resources,
    mounts: Sequence[Fields],
    ports: Sequence[Fields] = (),
    env: Sequence[Fields] = (),
) -> Fields:
    """The server's container: its command line, ports (``ports``: more of them), gRPC probes,
    hardening, ``/tmp`` and ``env``."""
    container: Fields = {
        "name": command.COMMAND,
        "image": image,
        "command": [command.COMMAND],
        "args": command.to_argv(),
        "ports": [
            {"name": "grpc", "containerPort": command.grpc_port, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": command.health_port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": command.metrics_port, "protocol": "TCP"},
            *ports,
        ],
        "livenessProbe": grpc_probe(command.health_port, "liveness"),
        "readinessProbe": grpc_probe(command.health_port, "readiness", period=2),
        "resources": resources(spec),
        "securityContext": container_security_context(),
        "volumeMounts": [*mounts, {"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }
    if env:
        container["env"] = list(env)
    return container


@dataclass(frozen=True)
class ExtProcServiceArgs:
    component: str
    """``app.kubernetes.io/name`` of its objects: ``epp`` or ``bbr``."""
    namespace_ref: pulumi.Input[str]
    command: ServerSettings
    """The server's command line (``epp.settings``); its ports are the container's and the Service's."""
    replicas: int
    resources: Resources
    image_ref: pulumi.Input[str]
    image: pulumi.Resource
    provider: k8s.Provider
    service_account: pulumi.Input[str] | None = None
    """The pod's ServiceAccount (its token mounted); None: the default one, without a token."""
    termination_grace_period_seconds: int | None = None
    mounts: Sequence[Fields] = field(default_factory=list)
    """Mounts before the ``/tmp`` scratch mount; each names one of ``volumes``."""
    volumes: Sequence[Fields] = field(default_factory=list)
    ports: Sequence[Fields] = field(default_factory=list)
    """Container ports beyond the ext_proc, health and metrics ones (not on the Service)."""
    env: Sequence[Fields] = field(default_factory=list)


class ExtProcService(pulumi.ComponentResource):
    """Deployment, Service, PodDisruptionBudget and GRPC HealthCheckPolicy of one ext_proc server.

    Every object is named ``name``, the health check ``<name>-health``. They were once children of
    the EPP's and the BBR's own components: the aliases keep their identity in existing stacks.
    """

    deployment: k8s.apps.v1.Deployment
    service: k8s.core.v1.Service
    disruption_budget: k8s.policy.v1.PodDisruptionBudget
    health_check: k8s.apiextensions.CustomResource
    service_name: str

    def __init__(
        self, name: str, args: ExtProcServiceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gke-llm-gateway:index:ExtProcService", name, None, opts)
        self.service_name = name
        command = args.command.model_copy(update={"bind": "0.0.0.0", "secure_serving": True})
        object_labels = labels(args.component, name)
        pods = pod_selector(args.component, name)
        metadata: Fields = {"name": name, "namespace": args.namespace_ref, "labels": object_labels}
        moved = [pulumi.Alias(parent=opts.parent)] if opts is not None and opts.parent is not None else []
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, aliases=moved)

        pod: Fields = {}
        if args.service_account is not None:
            pod["serviceAccountName"] = args.service_account
        else:
            pod["automountServiceAccountToken"] = False
        pod |= {
            "topologySpreadConstraints": spread_over_nodes(pods),
            "securityContext": pod_security_context(EPP_IMAGE_UID),
        }
        if args.termination_grace_period_seconds is not None:
            pod["terminationGracePeriodSeconds"] = args.termination_grace_period_seconds
        pod |= {
            "containers": [
                ext_proc_container(command, args.image_ref, args.resources, args.mounts, args.ports, args.env)
            ],
            "volumes": [*args.volumes, empty_dir(TMP_VOLUME, "64Mi")],
        }
        deployment_spec: Fields = {
            # Active-active: the load balancer spreads ext_proc streams over the replicas.
            "replicas": args.replicas,
            "selector": {"matchLabels": pods},
            "strategy": ROLLING_UPDATE,
            "template": {"metadata": {"labels": object_labels}, "spec": pod},
        }
        self.deployment = k8s.apps.v1.Deployment(
            name,
            metadata=metadata,
            spec=deployment_spec,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[args.image])),
        )
        self.disruption_budget = keep_one_running(name, metadata, pods, child)
        service_spec: Fields = {
            "type": "ClusterIP",
            "selector": pods,
            "ports": [
                {
                    "name": EXT_PROC_PORT_NAME,
                    "port": command.grpc_port,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": EXT_PROC_APP_PROTOCOL,
                },
                {
                    "name": HEALTH_PORT_NAME,
                    "port": command.health_port,
                    "targetPort": "grpc-health",
                    "protocol": "TCP",
                },
                {
                    "name": METRICS_PORT_NAME,
                    "port": command.metrics_port,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        }
        self.service = k8s.core.v1.Service(name, metadata=metadata, spec=service_spec, opts=child)
        health_name = f"{name}-health"
        self.health_check = grpc_health_check_policy(
            name,
            command.health_port,
            object_meta(health_name, args.namespace_ref, "healthcheckpolicy", name),
            self.service,
            child,
        )
        self.register_outputs({"service": name, "healthCheckPolicy": health_name})
