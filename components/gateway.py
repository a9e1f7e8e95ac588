"""Gateway and routes: the regional external Gateway, its HTTPRoutes, and the backend policies.

The Gateway (``gke-l7-regional-external-managed``, HTTP on 80) takes a reserved regional static IP
and depends explicitly on the proxy-only subnet its Envoy proxies live in. Per-model-pools mode: one
HTTPRoute per model matching ``X-Gateway-Base-Model-Name`` exactly (set by BBR from the body) to
that model's InferencePool. Unified-pool mode: one route to the single pool, whose EPP routes by
model. A GCPBackendPolicy per pool gives LLM requests a long timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from components.config import GatewaySettings
from components.inference_extension import INFERENCE_GROUP
from components.podspec import object_meta

GATEWAY_NAME = "llm-gateway"
GATEWAY_CLASS = "gke-l7-regional-external-managed"
MODEL_HEADER = "X-Gateway-Base-Model-Name"


@dataclass(frozen=True)
class Route:
    """Requests to send to one InferencePool; ``served_name=None`` means every request."""

    pool_name: str
    served_name: str | None


@dataclass(frozen=True)
class GatewayArgs:
    project: str
    region: str
    cluster_name: str
    namespace_ref: pulumi.Input[str]
    settings: GatewaySettings
    proxy_only_subnet: pulumi.Resource
    provider: k8s.Provider


class Gateway(pulumi.ComponentResource):
    """Static IP + Gateway; routes and backend policies are added per pool with :meth:`route`."""

    address: gcp.compute.Address
    gateway: k8s.apiextensions.CustomResource
    ip_address: pulumi.Output[str]
    name: str

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:Gateway", name, None, opts)
        self._args = args
        self.name = GATEWAY_NAME
        self.address = gcp.compute.Address(
            f"{name}-ip",
            name=f"{args.cluster_name}-gateway",
            project=args.project,
            region=args.region,
            address_type="EXTERNAL",
            network_tier=args.settings.network_tier,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.ip_address = self.address.address
        self.gateway = k8s.apiextensions.CustomResource(
            GATEWAY_NAME,
            api_version="gateway.networking.k8s.io/v1",
            kind="Gateway",
            metadata=object_meta(GATEWAY_NAME, args.namespace_ref, "gateway", GATEWAY_NAME),
            spec={
                "gatewayClassName": GATEWAY_CLASS,
                "addresses": [{"type": "NamedAddress", "value": self.address.name}],
                "listeners": [
                    {
                        "name": "http",
                        "protocol": "HTTP",
                        "port": 80,
                        "allowedRoutes": {"namespaces": {"from": "Same"}},
                    }
                ],
            },
            opts=pulumi.ResourceOptions(
                parent=self, provider=args.provider, depends_on=[args.proxy_only_subnet]
            ),
        )
        self.register_outputs({"gateway": GATEWAY_NAME, "address": self.ip_address})

    def route(self, route: Route, pool: pulumi.Resource) -> k8s.apiextensions.CustomResource:
        """An HTTPRoute to ``route.pool_name`` and the pool's GCPBackendPolicy (request timeout)."""
        args = self._args
        backend = {"group": INFERENCE_GROUP, "kind": "InferencePool", "name": route.pool_name}
        match: dict[str, object] = {"path": {"type": "PathPrefix", "value": "/"}}
        if route.served_name is not None:
            match["headers"] = [{"type": "Exact", "name": MODEL_HEADER, "value": route.served_name}]
        child = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[pool])
        route_name, policy_name = f"{route.pool_name}-route", f"{route.pool_name}-backend"
        http_route = k8s.apiextensions.CustomResource(
            route_name,
            api_version="gateway.networking.k8s.io/v1",
            kind="HTTPRoute",
            metadata=object_meta(route_name, args.namespace_ref, "httproute", route.pool_name),
            spec={
                "parentRefs": [
                    {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": GATEWAY_NAME}
                ],
                "rules": [{"matches": [match], "backendRefs": [backend]}],
            },
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[pool, self.gateway]),
        )
        k8s.apiextensions.CustomResource(
            policy_name,
            api_version="networking.gke.io/v1",
            kind="GCPBackendPolicy",
            metadata=object_meta(policy_name, args.namespace_ref, "gcpbackendpolicy", route.pool_name),
            spec={
                "targetRef": backend,
                "default": {
                    "timeoutSec": args.settings.request_timeout_sec,
                    "logging": {"enabled": True},
                },
            },
            opts=child,
        )
        return http_route
