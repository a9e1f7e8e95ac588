"""Network: the VPC, the node subnet (with pod and service ranges), the proxy-only subnet and Cloud NAT.

``gke-l7-regional-external-managed`` Gateways are Envoy-based regional load balancers; they need a
proxy-only subnet (``purpose=REGIONAL_MANAGED_PROXY``, ``role=ACTIVE``) in the cluster's region and
VPC before the Gateway is created.

With private nodes (the default) nodes have no external IP; a Cloud Router with Cloud NAT gives
them outbound access (image registries, the Hugging Face Hub), and Private Google Access on the node
subnet keeps traffic to Google APIs (Artifact Registry included) off the NAT.

Deleting a subnet or the VPC waits for what GKE left behind in it: their delete timeouts are
generous (the default 20 minutes can expire while load balancer parts are still going), and
:class:`components.negs.NegCleanup` removes leftover NEGs before either is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp

from components.config import Network as NetworkConfig

DELETE_TIMEOUT = "45m"
"""Subnets and the VPC: what GKE's controllers made in them may take a while to go."""
POD_RANGE = "pods"
SERVICE_RANGE = "services"


@dataclass(frozen=True)
class NetworkArgs:
    project: str
    region: str
    name: str
    ranges: NetworkConfig
    private_nodes: bool = True


class Network(pulumi.ComponentResource):
    """VPC + node subnet + proxy-only subnet of one stack."""

    vpc: gcp.compute.Network
    subnet: gcp.compute.Subnetwork
    proxy_only_subnet: gcp.compute.Subnetwork
    router: gcp.compute.Router | None
    nat: gcp.compute.RouterNat | None

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:Network", name, None, opts)
        child = pulumi.ResourceOptions(
            parent=self, custom_timeouts=pulumi.CustomTimeouts(delete=DELETE_TIMEOUT)
        )

        self.vpc = gcp.compute.Network(
            f"{name}-vpc",
            name=f"{args.name}-vpc",
            project=args.project,
            auto_create_subnetworks=False,
            routing_mode="REGIONAL",
            opts=child,
        )

        def subnetwork(suffix: str, cidr: str, **role: Any) -> gcp.compute.Subnetwork:
            """A subnetwork ``<stack>-<suffix>`` of this VPC in the stack's region; ``role`` is the rest."""
            return gcp.compute.Subnetwork(
                f"{name}-{suffix}",
                name=f"{args.name}-{suffix}",
                project=args.project,
                region=args.region,
                network=self.vpc.id,
                ip_cidr_range=cidr,
                opts=child,
                **role,
            )

        self.subnet = subnetwork(
            "nodes",
            args.ranges.node_cidr,
            private_ip_google_access=True,
            secondary_ip_ranges=[
                gcp.compute.SubnetworkSecondaryIpRangeArgs(
                    range_name=POD_RANGE, ip_cidr_range=args.ranges.pod_cidr
                ),
                gcp.compute.SubnetworkSecondaryIpRangeArgs(
                    range_name=SERVICE_RANGE, ip_cidr_range=args.ranges.service_cidr
                ),
            ],
        )
        self.proxy_only_subnet = subnetwork(
            "proxy-only",
            args.ranges.proxy_only_cidr,
            purpose="REGIONAL_MANAGED_PROXY",
            role="ACTIVE",
        )
        self.router = self.nat = None
        if args.private_nodes:
            self.router = gcp.compute.Router(
                f"{name}-router",
                name=f"{args.name}-router",
                project=args.project,
                region=args.region,
                network=self.vpc.id,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.nat = gcp.compute.RouterNat(
                f"{name}-nat",
                name=f"{args.name}-nat",
                project=args.project,
                region=args.region,
                router=self.router.name,
                nat_ip_allocate_option="AUTO_ONLY",
                source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
                log_config=gcp.compute.RouterNatLogConfigArgs(enable=True, filter="ERRORS_ONLY"),
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs(
            {
                "vpc": self.vpc.id,
                "subnet": self.subnet.id,
                "proxyOnlySubnet": self.proxy_only_subnet.id,
            }
        )
