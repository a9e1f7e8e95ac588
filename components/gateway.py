"""Gateway and routes: the regional Gateway, its listeners, its HTTPRoutes and the backend policies.

The Gateway is ``gke-l7-regional-external-managed`` (public, on a reserved regional static IP) or,
with ``visibility: internal``, ``gke-l7-rilb`` (a regional internal load balancer on an address of
the node subnet, reachable from the VPC only); both depend explicitly on the proxy-only subnet their
Envoy proxies live in. Without TLS it listens for HTTP on 80. With TLS it terminates HTTPS on 443
with the certificate of :mod:`components.tls`, and port 80 either answers every request with a 301
to HTTPS (an HTTPRoute whose only rule is a RequestRedirect) or is not served at all.

Per-model-pools mode: one HTTPRoute per model matching the base-model header exactly (set by the BBR
from the body) to that model's InferencePool. Unified-pool mode: one route to the single pool, whose
EPP routes by model. Either way a route matches only the exact API paths forwarded to pods
(``epp.api_routes``, :func:`route_matches`): no other path, ``/v1/models`` included, is ever sent to a
pool. The BBR, which sees every request before routing, answers those itself (the list, or a JSON
404) and refuses any method but ``POST`` on the API paths (405); the routes do not match on the
method, an extended Gateway API feature GKE's gateway classes are not documented to support.
A GCPBackendPolicy per pool sets the request timeout, connection draining and,
when ``allowedSourceRanges`` is set, the Cloud Armor policy that fences it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s
from epp.api_routes import DEFAULT_ROUTES, ApiRoutes
from epp.contract import BASE_MODEL_HEADER

from components.config import GatewaySettings
from components.inference_extension import INFERENCE_GROUP
from components.podspec import Fields, object_meta

GATEWAY_NAME = "llm-gateway"
GATEWAY_CLASSES = {"external": "gke-l7-regional-external-managed", "internal": "gke-l7-rilb"}
HTTP_LISTENER, HTTPS_LISTENER = "http", "https"
MAX_CONNECTION_DRAINING_SEC = 3600
"""GCPBackendPolicy ``connectionDraining.drainingTimeoutSec`` upper bound (the backend service's)."""


def draining_timeout_sec(request_timeout_sec: int) -> int:
    """How long the load balancer keeps an existing connection to an endpoint that is leaving (its
    default is 0: cut at once). As long as the longest request it allows, so a generation in flight
    on a terminating vLLM pod (whose grace period is that timeout plus the preStop drain) finishes."""
    return min(request_timeout_sec, MAX_CONNECTION_DRAINING_SEC)


@dataclass(frozen=True)
class Route:
    """Requests to send to one InferencePool; ``served_name=None`` means every request."""

    pool_name: str
    served_name: str | None
    pool: pulumi.Resource
    """The InferencePool: its route and backend policy are created after it."""


@dataclass(frozen=True)
class GatewayArgs:
    project: str
    region: str
    cluster_name: str
    namespace_ref: pulumi.Input[str]
    settings: GatewaySettings
    proxy_only_subnet: pulumi.Resource
    subnet: gcp.compute.Subnetwork
    """The node subnet: an internal gateway's address is taken from it."""
    provider: k8s.Provider
    listener_tls: Fields | None = None
    """The HTTPS listener's ``tls`` block (:class:`components.tls.GatewayCertificate`); None: HTTP only."""
    security_policy: pulumi.Input[str] | None = None
    """Name of the regional Cloud Armor policy every backend is attached to."""
    routes: Sequence[Route] = ()
    """Each pool's route and backend policy, created with the Gateway (never after it registered)."""


def route_matches(served_name: str | None, api: ApiRoutes = DEFAULT_ROUTES) -> list[Fields]:
    """An HTTPRoute's matches: each exact API path, and the base-model header when the route is one
    model's (``served_name``)."""
    matches: list[Fields] = []
    for path in api.forwarded_paths:
        match: Fields = {"path": {"type": "Exact", "value": path}}
        if served_name is not None:
            match["headers"] = [{"type": "Exact", "name": BASE_MODEL_HEADER, "value": served_name}]
        matches.append(match)
    return matches


def listeners(settings: GatewaySettings, tls: Fields | None) -> list[Fields]:
    """HTTP on 80 without TLS; with TLS, HTTPS on 443 plus (unless turned off) 80 for the redirect."""
    same_namespace = {"namespaces": {"from": "Same"}}
    http = {"name": HTTP_LISTENER, "protocol": "HTTP", "port": 80, "allowedRoutes": same_namespace}
    if tls is None:
        return [http]
    https = {
        "name": HTTPS_LISTENER,
        "protocol": "HTTPS",
        "port": 443,
        "tls": tls,
        "allowedRoutes": same_namespace,
    }
    assert settings.tls is not None
    return [https, http] if settings.tls.redirect_http else [https]


class Gateway(pulumi.ComponentResource):
    """Address + Gateway (+ the HTTP redirect), and each pool's route and backend policy (``routes``)."""

    address: gcp.compute.Address
    gateway: k8s.apiextensions.CustomResource
    routes: list[k8s.apiextensions.CustomResource]
    """The HTTPRoute of each of ``GatewayArgs.routes``."""
    ip_address: pulumi.Output[str]
    name: str
    scheme: str
    serving_listener: str

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:Gateway", name, None, opts)
        self._args = args
        settings = args.settings
        self.name = GATEWAY_NAME
        self.scheme = "https" if args.listener_tls is not None else "http"
        self.serving_listener = HTTPS_LISTENER if args.listener_tls is not None else HTTP_LISTENER
        # Public: a regional external address. Internal: an address of the node subnet, of the
        # purpose a regional internal Application Load Balancer's forwarding rule takes.
        self.address = gcp.compute.Address(
            f"{name}-ip",
            name=f"{args.cluster_name}-gateway",
            project=args.project,
            region=args.region,
            address_type="EXTERNAL" if settings.public else "INTERNAL",
            network_tier=settings.network_tier if settings.public else None,
            subnetwork=None if settings.public else args.subnet.id,
            purpose=None if settings.public else "SHARED_LOADBALANCER_VIP",
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.ip_address = self.address.address
        self.gateway = k8s.apiextensions.CustomResource(
            GATEWAY_NAME,
            api_version="gateway.networking.k8s.io/v1",
            kind="Gateway",
            metadata=object_meta(GATEWAY_NAME, args.namespace_ref, "gateway", GATEWAY_NAME),
            spec={
                "gatewayClassName": GATEWAY_CLASSES[settings.visibility],
                "addresses": [{"type": "NamedAddress", "value": self.address.name}],
                "listeners": listeners(settings, args.listener_tls),
            },
            opts=pulumi.ResourceOptions(
                parent=self, provider=args.provider, depends_on=[args.proxy_only_subnet]
            ),
        )
        if args.listener_tls is not None and settings.tls is not None and settings.tls.redirect_http:
            self._redirect_to_https()
        self.routes = [self._route(route) for route in args.routes]
        self.register_outputs({"gateway": GATEWAY_NAME, "address": self.ip_address})

    def _parent_ref(self, listener: str) -> Fields:
        return {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": GATEWAY_NAME,
            "sectionName": listener,
        }

    def _redirect_to_https(self) -> None:
        """Every plain-HTTP request gets a 301 to the same URL over HTTPS; nothing is routed on 80."""
        args = self._args
        name = "http-to-https"
        k8s.apiextensions.CustomResource(
            name,
            api_version="gateway.networking.k8s.io/v1",
            kind="HTTPRoute",
            metadata=object_meta(name, args.namespace_ref, "httproute", name),
            spec={
                "parentRefs": [self._parent_ref(HTTP_LISTENER)],
                "rules": [
                    {
                        "filters": [
                            {
                                "type": "RequestRedirect",
                                "requestRedirect": {"scheme": "https", "statusCode": 301},
                            }
                        ]
                    }
                ],
            },
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[self.gateway]),
        )

    def _route(self, route: Route) -> k8s.apiextensions.CustomResource:
        """An HTTPRoute to ``route.pool_name`` and the pool's GCPBackendPolicy."""
        args = self._args
        backend = {"group": INFERENCE_GROUP, "kind": "InferencePool", "name": route.pool_name}
        route_name, policy_name = f"{route.pool_name}-route", f"{route.pool_name}-backend"
        http_route = k8s.apiextensions.CustomResource(
            route_name,
            api_version="gateway.networking.k8s.io/v1",
            kind="HTTPRoute",
            metadata=object_meta(route_name, args.namespace_ref, "httproute", route.pool_name),
            spec={
                "parentRefs": [self._parent_ref(self.serving_listener)],
                "rules": [{"matches": route_matches(route.served_name), "backendRefs": [backend]}],
            },
            opts=pulumi.ResourceOptions(
                parent=self, provider=args.provider, depends_on=[route.pool, self.gateway]
            ),
        )
        policy: Fields = {
            # The load balancer's per-request timeout: how long one generation may take end to end.
            "timeoutSec": args.settings.request_timeout_sec,
            "connectionDraining": {
                "drainingTimeoutSec": draining_timeout_sec(args.settings.request_timeout_sec)
            },
            "logging": {"enabled": True},
        }
        if args.security_policy is not None:
            policy["securityPolicy"] = args.security_policy
        k8s.apiextensions.CustomResource(
            policy_name,
            api_version="networking.gke.io/v1",
            kind="GCPBackendPolicy",
            metadata=object_meta(policy_name, args.namespace_ref, "gcpbackendpolicy", route.pool_name),
            spec={"targetRef": backend, "default": policy},
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[route.pool]),
        )
        return http_route
