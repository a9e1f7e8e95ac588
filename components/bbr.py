"""Body-Based Router: the gateway's front door, in both routing modes.

It reads ``model`` from the request body and sets the base-model header the per-model routes match;
it answers ``GET /v1/models``, refuses unknown models, and -- with ``auth.mode: api-keys`` -- checks
the caller's API key before any model server is touched. The key list is a Kubernetes Secret built
from the Pulumi secret ``apiKeys``, mounted read-only as a directory (never ``subPath``, so the
kubelet's update of a changed Secret reaches the running pods, which re-read it: adding or revoking
a key needs no restart). ``--limit-share N`` (N = replicas) makes each replica allow 1/N of every
key's ``requestsPerMinute``: the load balancer spreads requests over the replicas, so together they
allow the key's limit without sharing state. In unified-pool mode the BBR runs too, in front of the
single pool, so keys are checked the same way whatever the mode.

An :class:`components.extproc.ExtProcService` of our image running ``bbr`` (Deployment, Service,
PodDisruptionBudget, and the load balancer's gRPC health check: grpc.health.v1, service
``readiness``), attached to the Gateway by a GCPRoutingExtension (request body sent
``FullDuplexStreamed``). Under FailClose every request needs the BBR, and it is
stateless: two replicas by default, spread over nodes, rolled one surge pod at a time, and kept at
one or more through voluntary disruptions by a PodDisruptionBudget.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
from epp.contract import (
    API_KEYS_MOUNT_DIR,
    API_KEYS_SECRET_KEY,
    BBR_GRPC_PORT,
    BBR_HEALTH_PORT,
    METRICS_PORT,
)
from epp.settings import BbrSettings as BbrCommand

from components.config import BbrSettings
from components.extproc import ExtProcService, ExtProcServiceArgs
from components.podspec import Fields, labels, secret_file_volume
from components.secrets import as_secret

BBR_NAME = "body-based-router"
API_KEYS_SECRET = "api-keys"
API_KEYS_VOLUME = "api-keys"
EXTENSION_TIMEOUT = "1s"
"""The load balancer's wait for each ext_proc message the BBR answers (GCPRoutingExtension
``timeout``: 10 ms to 10 s per the CRD, 1 s when omitted). The BBR answers each message from memory
(body parse, key lookup) in well under a millisecond, so 1 s only trips on a hung or overloaded
replica; the body itself may take as long as the client needs, since the clock runs per message."""
EXTENSION_FAIL_OPEN = False
"""Fail closed, set on purpose: failing open would send a request on without the key check and
without its model header. A failed or timed-out call is then the load balancer's own 500 (before
response headers) -- see the README for what clients see."""


@dataclass(frozen=True)
class BodyBasedRouterArgs:
    namespace: str
    namespace_ref: pulumi.Input[str]
    served_models: list[str]
    settings: BbrSettings
    api_keys: pulumi.Output[str] | None
    """The key list (a Pulumi secret); None when ``auth.mode`` is ``none``."""
    image_ref: pulumi.Input[str]
    image: pulumi.Resource
    gateway_name: str
    gateway: pulumi.Resource
    provider: k8s.Provider


class BodyBasedRouter(pulumi.ComponentResource):
    """BBR Deployment + Service, its GCPRoutingExtension on the Gateway, and its gRPC health check."""

    front_door: ExtProcService
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
        metadata: Fields = {"name": BBR_NAME, "namespace": args.namespace_ref, "labels": bbr_labels}
        keys: dict[str, object] = {}
        mounts: list[Fields] = []
        volumes: list[Fields] = []
        self.api_keys_secret: k8s.core.v1.Secret | None = None
        if args.api_keys is not None:
            self.api_keys_secret = k8s.core.v1.Secret(
                API_KEYS_SECRET,
                metadata={"name": API_KEYS_SECRET, "namespace": args.namespace_ref, "labels": bbr_labels},
                type="Opaque",
                string_data={API_KEYS_SECRET_KEY: as_secret(args.api_keys)},
                opts=child,
            )
            # Each replica allows ceil(requestsPerMinute / replicas) of a key's limit.
            keys = {
                "api_keys_file": f"{API_KEYS_MOUNT_DIR}/{API_KEYS_SECRET_KEY}",
                "limit_share": args.settings.replicas,
            }
            mounts.append({"name": API_KEYS_VOLUME, "mountPath": API_KEYS_MOUNT_DIR, "readOnly": True})
            volumes.append(
                secret_file_volume(API_KEYS_VOLUME, self.api_keys_secret.metadata.name, API_KEYS_SECRET_KEY)
            )
        command = BbrCommand.model_validate(
            {
                "grpc_port": BBR_GRPC_PORT,
                "health_port": BBR_HEALTH_PORT,
                "metrics_port": METRICS_PORT,
                "served_models": args.served_models,
                **keys,
            }
        )
        self.front_door = ExtProcService(
            BBR_NAME,
            ExtProcServiceArgs(
                component="bbr",
                namespace_ref=args.namespace_ref,
                command=command,
                replicas=args.settings.replicas,
                resources=args.settings.resources,
                image_ref=args.image_ref,
                image=args.image,
                provider=args.provider,
                mounts=mounts,
                volumes=volumes,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.deployment = self.front_door.deployment
        self.disruption_budget = self.front_door.disruption_budget
        self.service = self.front_door.service
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
                                "failOpen": EXTENSION_FAIL_OPEN,
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
        self.register_outputs({"service": BBR_NAME, "servedModels": args.served_models})
