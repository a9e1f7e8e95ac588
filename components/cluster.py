"""Cluster: the GKE cluster, its node pools (CPU, GPU or TPU), and the Kubernetes provider built from it.

The cluster has the Gateway API enabled (``CHANNEL_STANDARD``), Workload Identity, a release
channel and no default node pool. Its version is the channel's: :mod:`components.versions` checks at
preview that the channel offers what the stack needs and, only when the channel's default is too
old, asks for the channel's newest (``minMasterVersion``, ignored after creation). Nodes are private
(no external IP; Cloud NAT in :mod:`components.network`) and run as a dedicated service account
holding ``roles/container.defaultNodeServiceAccount`` (and read access to Artifact Registry), the
temporary default pool included (the Compute Engine default service account is disabled or
unprivileged in hardened projects); no node is created before that account holds its roles.

Accelerator pools start empty unless told otherwise: the cluster autoscaler adds a node when a
model pod is pending. The Kubernetes provider -- and so every object in the cluster -- depends on
the CPU pools only, so a GPU quota of 0 or a zone out of T4s fails nothing but that pool's nodes.
The provider authenticates with ``gke-gcloud-auth-plugin`` (no static credentials in state) and
carries ``cluster_identifier`` so a kubeconfig change (a new endpoint certificate, say) updates the
provider instead of replacing every Kubernetes object.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from components.config import NodePool, PlatformConfig
from components.negs import NegCleanup, NegCleanupArgs
from components.network import POD_RANGE, SERVICE_RANGE, Network

NODE_ROLES = (
    "roles/container.defaultNodeServiceAccount",
    "roles/artifactregistry.reader",
)
"""What a GKE node needs: GKE's own least-privilege node role (logs, metrics, metadata), and pulling
images from Artifact Registry."""
SERVICE_ACCOUNT_ID = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
RESERVATION_KEY = "compute.googleapis.com/reservation-name"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
"""Access is governed by the service account's IAM roles, not by legacy scopes."""

GPU_TAINT = gcp.container.NodePoolNodeConfigTaintArgs(
    key="nvidia.com/gpu", value="present", effect="NO_SCHEDULE"
)
TPU_TAINT = gcp.container.NodePoolNodeConfigTaintArgs(
    key="google.com/tpu", value="present", effect="NO_SCHEDULE"
)


@dataclass(frozen=True)
class ClusterArgs:
    config: PlatformConfig
    network: Network
    master_version: str | None = None
    """What :func:`components.versions.resolve_master_version` chose (None: the channel's default)."""


def service_account_id(cluster_name: str, suffix: str = "nodes") -> str:
    """A valid service account id (6-30 characters, ``[a-z][-a-z0-9]*[a-z0-9]``) for any cluster name:
    ``<name>-<suffix>`` when it fits, else a shortened name plus a hash of the whole, so two long
    names never collide and the id never ends with ``-``."""
    candidate = f"{cluster_name}-{suffix}"
    if len(candidate) <= 30 and SERVICE_ACCOUNT_ID.fullmatch(candidate):
        return candidate
    digest = hashlib.sha256(candidate.encode()).hexdigest()[:6]
    head = candidate[: 30 - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


def kubeconfig_for(name: str, endpoint: str, ca_certificate: str) -> str:
    """An exec-based kubeconfig: credentials come from ``gke-gcloud-auth-plugin`` at use time."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {"server": f"https://{endpoint}", "certificate-authority-data": ca_certificate},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "users": [
            {
                "name": name,
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": "gke-gcloud-auth-plugin",
                        "installHint": "Install gke-gcloud-auth-plugin: "
                        "gcloud components install gke-gcloud-auth-plugin",
                        "provideClusterInfo": True,
                    }
                },
            }
        ],
    }
    return json.dumps(document, indent=2)


class Cluster(pulumi.ComponentResource):
    """GKE cluster + node pools + the Kubernetes provider every in-cluster object uses."""

    cluster: gcp.container.Cluster
    node_pools: dict[str, gcp.container.NodePool]
    node_service_account: gcp.serviceaccount.Account
    node_roles: list[gcp.projects.IAMMember]
    neg_cleanup: NegCleanup
    provider: k8s.Provider
    kubeconfig: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:Cluster", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)

        self.node_service_account = gcp.serviceaccount.Account(
            f"{name}-nodes",
            account_id=service_account_id(cfg.cluster_name),
            display_name=f"GKE nodes of {cfg.cluster_name}",
            project=cfg.project,
            opts=child,
        )
        self.node_roles = []
        for role in NODE_ROLES:
            member = gcp.projects.IAMMember(
                f"{name}-nodes-{role.split('/')[-1].replace('.', '-').lower()}",
                project=cfg.project,
                role=role,
                member=self.node_service_account.email.apply(lambda email: f"serviceAccount:{email}"),
                opts=child,
            )
            self.node_roles.append(member)
        nodes_opts = pulumi.ResourceOptions(parent=self, depends_on=list(self.node_roles))
        # Deleted after the cluster and before the subnets: removes the NEGs GKE left in the VPC.
        self.neg_cleanup = NegCleanup(
            f"{name}-neg-cleanup",
            NegCleanupArgs(project=cfg.project, network=args.network.vpc.name),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[args.network.vpc, args.network.subnet, args.network.proxy_only_subnet],
            ),
        )

        self.cluster = gcp.container.Cluster(
            name,
            name=cfg.cluster_name,
            project=cfg.project,
            location=cfg.zone,
            network=args.network.vpc.id,
            subnetwork=args.network.subnet.id,
            remove_default_node_pool=True,
            initial_node_count=1,
            # The default pool lives only until the cluster exists, but its nodes still boot.
            node_config=gcp.container.ClusterNodeConfigArgs(
                service_account=self.node_service_account.email,
                oauth_scopes=[CLOUD_PLATFORM_SCOPE],
            ),
            deletion_protection=cfg.deletion_protection,
            networking_mode="VPC_NATIVE",
            ip_allocation_policy=gcp.container.ClusterIpAllocationPolicyArgs(
                cluster_secondary_range_name=POD_RANGE,
                services_secondary_range_name=SERVICE_RANGE,
            ),
            release_channel=gcp.container.ClusterReleaseChannelArgs(channel=cfg.release_channel),
            min_master_version=args.master_version,
            private_cluster_config=(
                gcp.container.ClusterPrivateClusterConfigArgs(enable_private_nodes=True)
                if cfg.private_nodes
                else None
            ),
            gateway_api_config=gcp.container.ClusterGatewayApiConfigArgs(channel="CHANNEL_STANDARD"),
            workload_identity_config=gcp.container.ClusterWorkloadIdentityConfigArgs(
                workload_pool=f"{cfg.project}.svc.id.goog"
            ),
            addons_config=gcp.container.ClusterAddonsConfigArgs(
                http_load_balancing=gcp.container.ClusterAddonsConfigHttpLoadBalancingArgs(disabled=False),
            ),
            enable_shielded_nodes=True,
            opts=pulumi.ResourceOptions.merge(
                nodes_opts,
                pulumi.ResourceOptions(
                    depends_on=[self.neg_cleanup],
                    # A version chosen at creation; GKE upgrades within the channel from then on.
                    ignore_changes=["minMasterVersion"],
                    custom_timeouts=pulumi.CustomTimeouts(delete="45m"),
                ),
            ),
        )

        self.node_pools = {pool.name: self._node_pool(name, cfg, pool, nodes_opts) for pool in cfg.node_pools}
        cpu_pools = [self.node_pools[pool.name] for pool in cfg.node_pools if pool.accelerator is None]

        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(
                self.cluster.name, self.cluster.endpoint, self.cluster.master_auth.cluster_ca_certificate
            ).apply(
                lambda parts: kubeconfig_for(f"gke_{cfg.project}_{cfg.zone}_{parts[0]}", parts[1], parts[2])
            )
        )
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            cluster_identifier=self.cluster.id,
            enable_server_side_apply=True,
            # Only the CPU pools: an accelerator pool without quota or capacity must not hold back
            # the gateway, the BBR and the EPPs (model pods just stay pending until nodes appear).
            opts=pulumi.ResourceOptions(parent=self, depends_on=cpu_pools),
        )
        self.register_outputs(
            {
                "cluster": self.cluster.id,
                "nodePools": {key: pool.id for key, pool in self.node_pools.items()},
                "kubeconfig": self.kubeconfig,
            }
        )

    def _node_pool(
        self, name: str, cfg: PlatformConfig, pool: NodePool, opts: pulumi.ResourceOptions
    ) -> gcp.container.NodePool:
        accelerators: list[gcp.container.NodePoolNodeConfigGuestAcceleratorArgs] = []
        taints: list[gcp.container.NodePoolNodeConfigTaintArgs] = []
        if pool.family == "gpu":
            accelerators.append(
                gcp.container.NodePoolNodeConfigGuestAcceleratorArgs(
                    type=str(pool.accelerator),
                    count=pool.accelerator_count,
                    gpu_driver_installation_config=(
                        gcp.container.NodePoolNodeConfigGuestAcceleratorGpuDriverInstallationConfigArgs(
                            gpu_driver_version="LATEST"
                        )
                    ),
                )
            )
            taints.append(GPU_TAINT)
        elif pool.family == "tpu":
            taints.append(TPU_TAINT)
        # Single-host TPU slices need no placement policy; GKE labels the nodes with their topology.
        multi_host_tpu = pool.family == "tpu" and _chips(pool.tpu_topology) > pool.accelerator_count
        return gcp.container.NodePool(
            f"{name}-{pool.name}",
            name=pool.name,
            project=cfg.project,
            location=cfg.zone,
            cluster=self.cluster.name,
            initial_node_count=pool.initial_node_count,
            autoscaling=gcp.container.NodePoolAutoscalingArgs(
                min_node_count=pool.min_nodes, max_node_count=pool.max_nodes
            ),
            management=gcp.container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True),
            placement_policy=(
                gcp.container.NodePoolPlacementPolicyArgs(type="COMPACT", tpu_topology=pool.tpu_topology)
                if multi_host_tpu
                else None
            ),
            node_config=gcp.container.NodePoolNodeConfigArgs(
                machine_type=pool.machine_type,
                disk_size_gb=pool.disk_size_gb,
                spot=pool.spot,
                reservation_affinity=(
                    gcp.container.NodePoolNodeConfigReservationAffinityArgs(
                        consume_reservation_type="SPECIFIC_RESERVATION",
                        key=RESERVATION_KEY,
                        values=[pool.reservation],
                    )
                    if pool.reservation
                    else None
                ),
                service_account=self.node_service_account.email,
                oauth_scopes=[CLOUD_PLATFORM_SCOPE],
                guest_accelerators=accelerators or None,
                taints=taints or None,
                labels={"llm-gateway.dev/pool": pool.name},
                workload_metadata_config=gcp.container.NodePoolNodeConfigWorkloadMetadataConfigArgs(
                    mode="GKE_METADATA"
                ),
                shielded_instance_config=gcp.container.NodePoolNodeConfigShieldedInstanceConfigArgs(
                    enable_secure_boot=pool.family != "tpu", enable_integrity_monitoring=True
                ),
            ),
            # The count the pool is created with; the autoscaler owns it afterwards (and changing it
            # would replace the pool, on a stack created when accelerator pools started non-empty).
            opts=pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(ignore_changes=["initialNodeCount"])
            ),
        )


def _chips(topology: str | None) -> int:
    if topology is None:
        return 0
    total = 1
    for dimension in topology.split("x"):
        total *= int(dimension)
    return total
