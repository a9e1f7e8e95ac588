"""Inference extension: the InferencePool CRD if GKE does not ship it, and per pool its InferencePool and EPP.

GKE from 1.34.0-gke.1626000 installs the GA CRD (``inference.networking.k8s.io/v1``) itself; for
clusters that do not, :class:`InferencePoolCrd` applies the Gateway API Inference Extension v1.5.0
release manifest vendored in ``manifests/``. Either way every InferencePool depends explicitly on
what makes its API exist (``InferencePoolArgs.pool_api``: the CRD, or the cluster that ships it).
Each pool gets its own EPP: an :class:`components.extproc.ExtProcService` of our image (Deployment,
gRPC Service on 9002, PodDisruptionBudget, health check) running ``epp --pool-name <pool>``, a
ServiceAccount whose Role can only get/list/watch pods and inferencepools, and a ConfigMap holding
its EndpointPickerConfig.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml
from epp.contract import EPP_GRPC_PORT, EPP_HEALTH_PORT, EPP_PEER_PORT, METRICS_PORT
from epp.scheduling.config import PROFILES_DIR, PROFILES_PACKAGE
from epp.settings import EppSettings as EppCommand

from components.config import EppSettings, endpoint_picker_yaml
from components.epp_peers import EppPeers
from components.extproc import ExtProcService, ExtProcServiceArgs
from components.podspec import Fields, labels, object_meta, pod_selector

CRD_MANIFEST = Path(__file__).parent / "manifests" / "inferencepool-crd-v1.5.0.yaml"

INFERENCE_GROUP = "inference.networking.k8s.io"
INFERENCE_API_VERSION = f"{INFERENCE_GROUP}/v1"
MODEL_PORT = 8000
CONFIG_MOUNT = "/config"
CONFIG_FILE = "epp.yaml"
FLOW_CONTROL_GATE = "flowControl"


def endpoint_picker_config(settings: EppSettings, wake_timeout_sec: int | None = None) -> str:
    """The EndpointPickerConfig YAML for ``settings``: the user's full config, else the named profile.

    With ``wake_timeout_sec`` (a pool whose model may be at zero pods) the flow-control queue is
    switched on (``featureGates: [flowControl]``) and holds a request that finds no endpoint that
    long (``flowControl.noEndpointRequestTTL``, llm-d's field) while KEDA wakes the model.
    """
    if settings.config is not None:
        text = endpoint_picker_yaml(settings.config)
    else:
        # The profiles the installed EPP package ships: the same files the EPP image carries.
        profile = resources.files(PROFILES_PACKAGE).joinpath(PROFILES_DIR, f"{settings.profile}.yaml")
        text = profile.read_text(encoding="utf-8")
    if wake_timeout_sec is None:
        return text
    document = dict(yaml.safe_load(text) or {})
    gates = [str(gate) for gate in document.get("featureGates") or []]
    if FLOW_CONTROL_GATE not in gates:
        gates.append(FLOW_CONTROL_GATE)
    flow_control = dict(document.get("flowControl") or {})
    flow_control["noEndpointRequestTTL"] = f"{wake_timeout_sec}s"
    document |= {"featureGates": gates, "flowControl": flow_control}
    return endpoint_picker_yaml(document)


class InferencePoolCrd(pulumi.ComponentResource):
    """The InferencePool CustomResourceDefinition, from the vendored upstream release manifest.

    Only for clusters that do not ship it (``inferencePoolCrd: install``). It is retained on
    delete: ``pulumi destroy`` removes the cluster anyway, and a stack later switched to
    ``gke-managed`` must forget the CRD, not delete it (and with it every InferencePool).
    """

    crd: k8s.apiextensions.v1.CustomResourceDefinition

    def __init__(self, name: str, provider: k8s.Provider, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:InferencePoolCrd", name, None, opts)
        self.crd = vendored_crd(CRD_MANIFEST, provider, self)
        self.register_outputs({"crd": self.crd.metadata.name})


def vendored_crd(
    path: Path, provider: k8s.Provider, parent: pulumi.Resource
) -> k8s.apiextensions.v1.CustomResourceDefinition:
    """A CRD from a vendored release manifest, retained on delete (deleting a CRD deletes its objects)."""
    manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    if manifest.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path} is not a CustomResourceDefinition")
    return k8s.apiextensions.v1.CustomResourceDefinition(
        manifest["metadata"]["name"],
        metadata=manifest["metadata"],
        spec=manifest["spec"],
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, retain_on_delete=True),
    )


@dataclass(frozen=True)
class InferencePoolArgs:
    pool_name: str
    namespace: str
    namespace_ref: pulumi.Input[str]
    selector: dict[str, str]
    """Labels of the model-server pods this pool (and its EPP) picks from."""
    models: tuple[str, ...]
    """Served names of the models this pool is configured for (503, not 404, while none is up)."""
    epp: EppSettings
    image_ref: pulumi.Input[str]
    image: pulumi.Resource
    pool_api: pulumi.Resource
    """What makes the InferencePool API exist: the installed CRD, or the GKE cluster that ships it."""
    provider: k8s.Provider
    wake_timeout_sec: int | None = None
    """Set when a model of the pool may be at zero pods: how long its first request waits to wake it."""
    objectives: dict[str, int] = dataclasses.field(default_factory=dict)
    """InferenceObjective name -> priority, for the EPP's flow-control queue (``--objective``)."""


class InferencePool(pulumi.ComponentResource):
    """One InferencePool and the Endpoint Picker that schedules its requests."""

    pool: k8s.apiextensions.CustomResource
    pool_name: str
    epp_service_name: str
    epp_service: k8s.core.v1.Service
    endpoint_picker: ExtProcService
    deployment: k8s.apps.v1.Deployment
    disruption_budget: k8s.policy.v1.PodDisruptionBudget

    def __init__(
        self, name: str, args: InferencePoolArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gke-llm-gateway:index:InferencePool", name, None, opts)
        self.pool_name = args.pool_name
        epp_name = f"{args.pool_name}-epp"
        self.epp_service_name = epp_name
        epp_labels = labels("epp", epp_name)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)

        def meta(object_name: str) -> Fields:
            return {"name": object_name, "namespace": args.namespace_ref, "labels": epp_labels}

        self.pool = k8s.apiextensions.CustomResource(
            args.pool_name,
            api_version=INFERENCE_API_VERSION,
            kind="InferencePool",
            metadata=object_meta(args.pool_name, args.namespace_ref, "inferencepool", args.pool_name),
            spec={
                "selector": {"matchLabels": args.selector},
                "targetPorts": [{"number": MODEL_PORT}],
                "endpointPickerRef": {
                    "group": "",
                    "kind": "Service",
                    "name": epp_name,
                    "port": {"number": EPP_GRPC_PORT},
                    "failureMode": args.epp.failure_mode,
                },
            },
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[args.pool_api]),
        )

        service_account = k8s.core.v1.ServiceAccount(
            epp_name, metadata=meta(epp_name), automount_service_account_token=True, opts=child
        )
        rules: Fields = [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {
                "apiGroups": [INFERENCE_GROUP],
                "resources": ["inferencepools"],
                "verbs": ["get", "list", "watch"],
            },
        ]
        role = k8s.rbac.v1.Role(
            epp_name,
            metadata=meta(epp_name),
            rules=rules,
            opts=child,
        )
        role_ref: Fields = {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role.metadata.name,
        }
        subjects: Fields = [
            {"kind": "ServiceAccount", "name": service_account.metadata.name, "namespace": args.namespace}
        ]
        k8s.rbac.v1.RoleBinding(
            epp_name,
            metadata=meta(epp_name),
            role_ref=role_ref,
            subjects=subjects,
            opts=child,
        )
        config_map = k8s.core.v1.ConfigMap(
            f"{epp_name}-config",
            metadata=meta(f"{epp_name}-config"),
            data={CONFIG_FILE: endpoint_picker_config(args.epp, args.wake_timeout_sec)},
            opts=child,
        )
        # Written only when set: the EPP's own default is off.
        follow: dict[str, Any] = (
            {"follow_answers_up_to": args.epp.follow_answers_up_to} if args.epp.follow_answers_up_to else {}
        )
        # Several replicas tell each other their picks (epp.peers): a headless Service and a Secret.
        self.peers: EppPeers | None = None
        peer_flags: dict[str, Any] = {}
        if args.epp.replicas > 1:
            self.peers = EppPeers(
                f"{epp_name}-peers",
                namespace=args.namespace,
                namespace_ref=args.namespace_ref,
                labels=epp_labels,
                selector=pod_selector("epp", epp_name),
                provider=args.provider,
                opts=pulumi.ResourceOptions(parent=self),
            )
            wiring = self.peers.wiring
            peer_flags = {
                "peers": wiring.peers, "peer_port": EPP_PEER_PORT, "peer_key_file": Path(wiring.key_file)
            }
        command = EppCommand(
            pool_name=args.pool_name,
            pool_namespace=args.namespace,
            config_file=Path(f"{CONFIG_MOUNT}/{CONFIG_FILE}"),
            grpc_port=EPP_GRPC_PORT,
            health_port=EPP_HEALTH_PORT,
            metrics_port=METRICS_PORT,
            pool_models=args.models,
            objectives=args.objectives,
            replicas=args.epp.replicas,
            **follow,
            **peer_flags,
        )
        mounts: list[Fields] = [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}]
        volumes: list[Fields] = [{"name": "config", "configMap": {"name": config_map.metadata.name}}]
        if self.peers is not None:
            mounts.append(self.peers.wiring.mount)
            volumes.append(self.peers.wiring.volume)
        # Active-active: the load balancer spreads ext_proc streams over the replicas; each picks
        # on its own view of the pods' load, and with the others' picks (epp.peers) the same prefix
        # placements.
        self.endpoint_picker = ExtProcService(
            epp_name,
            ExtProcServiceArgs(
                component="epp",
                namespace_ref=args.namespace_ref,
                command=command,
                replicas=args.epp.replicas,
                resources=args.epp.resources,
                image_ref=args.image_ref,
                image=args.image,
                provider=args.provider,
                service_account=service_account.metadata.name,
                termination_grace_period_seconds=30,
                mounts=mounts,
                volumes=volumes,
                ports=[self.peers.wiring.port] if self.peers is not None else [],
                env=[self.peers.wiring.env] if self.peers is not None else [],
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.deployment = self.endpoint_picker.deployment
        self.disruption_budget = self.endpoint_picker.disruption_budget
        self.epp_service = self.endpoint_picker.service
        self.register_outputs({"pool": args.pool_name, "endpointPicker": epp_name})
