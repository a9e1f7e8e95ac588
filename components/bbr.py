"""Body-Based Router: reads ``model`` from the request body and sets ``X-Gateway-Base-Model-Name``.

Per-model-pools mode only. A Deployment and Service of our image in BBR mode, attached to the
Gateway by a GCPRoutingExtension (request body sent ``FullDuplexStreamed``), and health-checked by
the load balancer over gRPC (grpc.health.v1, service ``readiness``). Under FailClose every request
needs the BBR, and it is stateless: two replicas by default, spread over nodes, rolled one surge
pod at a time, and kept at one or more through voluntary disruptions by a PodDisruptionBudget.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.config import BbrSettings
from components.health import grpc_health_check_policy
from components.podspec import (
    EPP_IMAGE_UID,
    Fields,
    ext_proc_container,
    ext_proc_tmp_volume,
    labels,
    pod_security_context,
)

BBR_NAME = "body-based-router"
BBR_GRPC_PORT = 9004
BBR_HEALTH_PORT = 9005
METRICS_PORT = 9090
EXTENSION_TIMEOUT = "1s"


@dataclass(frozen=True)
class BodyBasedRouterArgs:
    namespace: str
    namespace_ref: pulumi.Input[str]
    served_models: list[str]
    settings: BbrSettings
    image_ref: pulumi.Input[str]
    image: pulumi.Resource
    gateway_name: str
    gateway: pulumi.Resource
    provider: k8s.Provider


class BodyBasedRouter(pulumi.ComponentResource):
    """BBR Deployment + Service, its GCPRoutingExtension on the Gateway, and its gRPC health check."""

    deployment: k8s.apps.v1.Deployment
    disruption_budget: k8s.policy.v1.PodDisruptionBudget
    service: k8s.core.v1.Service
    extension: k8s.apiextensions.CustomResource

    def __init__(
        self, name: str, args: BodyBasedRouterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gke-llm-gateway:index:BodyBasedRouter", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        bbr_labels = labels("bbr", BBR_NAME)
        selector = {"app.kubernetes.io/name": "bbr", "app.kubernetes.io/instance": BBR_NAME}
        metadata: Fields = {"name": BBR_NAME, "namespace": args.namespace_ref, "labels": bbr_labels}

        deployment_spec: Fields = {
            "replicas": args.settings.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": bbr_labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": selector},
                        }
                    ],
                    "securityContext": pod_security_context(EPP_IMAGE_UID),
                    "containers": [
                        ext_proc_container(
                            "bbr",
                            args.image_ref,
                            {
                                "--grpc-port": BBR_GRPC_PORT,
                                "--health-port": BBR_HEALTH_PORT,
                                "--metrics-port": METRICS_PORT,
                                "--served-models": ",".join(args.served_models),
                            },
                            grpc_port=BBR_GRPC_PORT,
                            health_port=BBR_HEALTH_PORT,
                            metrics_port=METRICS_PORT,
                            spec=args.settings.resources,
                            command=["bbr"],
                        )
                    ],
                    "volumes": [ext_proc_tmp_volume()],
                },
            },
        }
        self.deployment = k8s.apps.v1.Deployment(
            BBR_NAME,
            metadata=metadata,
            spec=deployment_spec,
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[args.image]),
        )
        disruption_budget_spec: Fields = {"minAvailable": 1, "selector": {"matchLabels": selector}}
        self.disruption_budget = k8s.policy.v1.PodDisruptionBudget(
            BBR_NAME,
            metadata=metadata,
            spec=disruption_budget_spec,
            opts=child,
        )
        service_spec: Fields = {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {
                    "name": "grpc",
                    "port": BBR_GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "HTTP2",
                },
                {
                    "name": "grpc-health",
                    "port": BBR_HEALTH_PORT,
                    "targetPort": "grpc-health",
                    "protocol": "TCP",
                },
            ],
        }
        self.service = k8s.core.v1.Service(
            BBR_NAME,
            metadata=metadata,
            spec=service_spec,
            opts=child,
        )
        self.extension = k8s.apiextensions.CustomResource(
            BBR_NAME,
            api_version="networking.gke.io/v1",
            kind="GCPRoutingExtension",
            metadata=metadata,
            spec={
                "targetRefs": [
                    {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": args.gateway_name}
                ],
                "extensionChains": [
                    {
                        "name": "body-based-routing",
                        "extensions": [
                            {
                                "name": "bbr",
                                "authority": f"{BBR_NAME}.{args.namespace}.svc",
                                "timeout": EXTENSION_TIMEOUT,
                                "supportedEvents": ["RequestHeaders", "RequestBody", "RequestTrailers"],
                                "requestBodySendMode": "FullDuplexStreamed",
                                "backendRef": {
                                    "group": "",
                                    "kind": "Service",
                                    "name": BBR_NAME,
                                    "port": BBR_GRPC_PORT,
                                },
                            }
                        ],
                    }
                ],
            },
            opts=pulumi.ResourceOptions(
                parent=self, provider=args.provider, depends_on=[self.service, args.gateway]
            ),
        )
        grpc_health_check_policy(
            BBR_NAME,
            BBR_HEALTH_PORT,
            {"name": f"{BBR_NAME}-health", "namespace": args.namespace_ref, "labels": bbr_labels},
            self.service,
            child,
        )
        self.register_outputs({"service": BBR_NAME, "servedModels": args.served_models})
