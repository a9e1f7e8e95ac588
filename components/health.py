"""Health: the load balancer's HealthCheckPolicy for each InferencePool.

An InferencePool is checked over HTTP ``/health`` on 8000. Field reports say GKE does not reconcile
a HealthCheckPolicy created before its InferencePool, so each policy carries an explicit dependency
on its pool rather than relying on ordering by chance. The ext_proc servers the load balancer calls
(each pool's EPP, the BBR) are checked over gRPC by their own :mod:`components.extproc`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.inference_extension import INFERENCE_GROUP, MODEL_PORT
from components.podspec import object_meta


@dataclass(frozen=True)
class PoolHealthCheckArgs:
    pool_name: str
    pool: pulumi.Resource
    namespace_ref: pulumi.Input[str]
    provider: k8s.Provider


class PoolHealthCheck(pulumi.ComponentResource):
    """The HealthCheckPolicy of one InferencePool, created after it (its EPP's is the EPP's
    :class:`components.extproc.ExtProcService`'s)."""

    policy: k8s.apiextensions.CustomResource

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
        self.register_outputs({"healthCheckPolicy": policy_name})
