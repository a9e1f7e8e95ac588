"""Cluster: the GKE cluster, its node pools (CPU, GPU or TPU), and the Kubernetes provider built from it.

The cluster has the Gateway API enabled (``CHANNEL_STANDARD``), Workload Identity, a release
channel and no default node pool; with ``inferencePoolCrd: gke-managed`` its control plane is at
least the GKE version that ships the InferencePool CRD (``minMasterVersion``). Nodes run as a
dedicated, minimally privileged service account, the temporary default pool included (the Compute
Engine default service account is disabled or unprivileged in hardened projects), and no node is
created before that account holds its roles.
The provider authenticates with ``gke-gcloud-auth-plugin`` (no static credentials in state) and
carries ``cluster_identifier`` so a kubeconfig change (a new endpoint certificate, say) updates the
provider instead of replacing every Kubernetes object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from components.config import NodePool, PlatformConfig
from components.network import POD_RANGE, SERVICE_RANGE, Network

NODE_ROLES = (
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
    "roles/artifactregistry.reader",
)
"""What a GKE node needs: write logs and metrics, pull images from Artifact Registry."""
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
    provider: k8s.Provider
    kubeconfig: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:Cluster", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)

        self.node_service_account = gcp.serviceaccount.Account(
            f"{name}-nodes",
            account_id=f"{cfg.cluster_name}-nodes"[:30],
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
            min_master_version=cfg.min_master_version,
            gateway_api_config=gcp.container.ClusterGatewayApiConfigArgs(channel="CHANNEL_STANDARD"),
            workload_identity_config=gcp.container.ClusterWorkloadIdentityConfigArgs(
                workload_pool=f"{cfg.project}.svc.id.goog"
            ),
            addons_config=gcp.container.ClusterAddonsConfigArgs(
                http_load_balancing=gcp.container.ClusterAddonsConfigHttpLoadBalancingArgs(disabled=False),
            ),
            enable_shielded_nodes=True,
            opts=nodes_opts,
        )

        self.node_pools = {pool.name: self._node_pool(name, cfg, pool, nodes_opts) for pool in cfg.node_pools}

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
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(self.node_pools.values())),
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
            initial_node_count=pool.initial_nodes,
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
            opts=opts,
        )


def _chips(topology: str | None) -> int:
    if topology is None:
        return 0
    total = 1
    for dimension in topology.split("x"):
        total *= int(dimension)
    return total
