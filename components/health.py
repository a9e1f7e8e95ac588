"""Health: the load balancer's HealthCheckPolicies, for each InferencePool and its ext_proc servers.

An InferencePool is checked over HTTP ``/health`` on 8000. Field reports say GKE does not reconcile
a HealthCheckPolicy created before its InferencePool, so each policy carries an explicit dependency
on its pool rather than relying on ordering by chance. The ext_proc servers the load balancer calls
(each pool's EPP, the BBR) are checked over gRPC (grpc.health.v1, service ``readiness``) on their
plaintext health port, each policy created after the Service it targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
from epp.contract import EPP_HEALTH_PORT

from components.inference_extension import INFERENCE_GROUP, MODEL_PORT
from components.podspec import Fields, object_meta

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


@dataclass(frozen=True)
class PoolHealthCheckArgs:
    pool_name: str
    pool: pulumi.Resource
    epp_service_name: str
    epp_service: pulumi.Resource
    namespace_ref: pulumi.Input[str]
    provider: k8s.Provider


class PoolHealthCheck(pulumi.ComponentResource):
    """The HealthCheckPolicies of one InferencePool and of its EPP, each created after its target."""

    policy: k8s.apiextensions.CustomResource
    epp_policy: k8s.apiextensions.CustomResource

    def __init__(
        self, name: str, args: PoolHealthCheckArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gke-llm-gateway:index:PoolHealthCheck", name, None, opts)
        policy_name = f"{args.pool_name}-health"
        self.policy = k8s.apiextensions.CustomResource(
            policy_name,
            api_version="networking.gke.io/v1",
            kind="HealthCheckPolicy",
            metadata=object_meta(policy_name, args.namespace_ref, "healthcheckpolicy", args.pool_name),
            spec={
                "targetRef": {"group": INFERENCE_GROUP, "kind": "InferencePool", "name": args.pool_name},
                "default": {
                    "checkIntervalSec": 10,
                    "timeoutSec": 5,
                    "healthyThreshold": 1,
                    "unhealthyThreshold": 3,
                    "logConfig": {"enabled": True},
                    "config": {
                        "type": "HTTP",
                        "httpHealthCheck": {
                            "requestPath": "/health",
                            "portSpecification": "USE_FIXED_PORT",
                            "port": MODEL_PORT,
                        },
                    },
                },
            },
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[args.pool]),
        )
        epp_policy_name = f"{args.epp_service_name}-health"
        self.epp_policy = grpc_health_check_policy(
            args.epp_service_name,
            EPP_HEALTH_PORT,
            object_meta(epp_policy_name, args.namespace_ref, "healthcheckpolicy", args.epp_service_name),
            args.epp_service,
            pulumi.ResourceOptions(parent=self, provider=args.provider),
        )
        self.register_outputs({"healthCheckPolicy": policy_name, "eppHealthCheckPolicy": epp_policy_name})
