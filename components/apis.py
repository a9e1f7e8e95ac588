"""Google APIs: enable what the stack uses, before the first resource that needs them.

A fresh project has Compute Engine, Kubernetes Engine and the rest disabled; the first resource
created against a disabled API fails with ``SERVICE_DISABLED``. :class:`GoogleApis` enables each
(``gcp.projects.Service``) and :func:`after_apis` is a transformation that makes every other Google
Cloud resource below the component it is given to wait for them. ``pulumi destroy`` leaves the APIs
enabled (``disable_on_destroy: false``): other workloads of the project may use them, and disabling
Compute Engine would delete every VM in it. Enabling needs the Service Usage and Cloud Resource
Manager APIs themselves, on in nearly every project (``make preflight`` checks).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

SERVICE_TYPE = "gcp:projects/service:Service"

BASE_APIS = (
    "compute.googleapis.com",
    "container.googleapis.com",
    "artifactregistry.googleapis.com",
    "iam.googleapis.com",
    "networkservices.googleapis.com",
)
"""VPC, subnets, addresses; the cluster; the EPP image; the node service account; the
GCPRoutingExtension that puts the BBR on the Gateway."""
CERTIFICATE_MANAGER_API = "certificatemanager.googleapis.com"


def required_apis(google_managed_certificate: bool) -> tuple[str, ...]:
    return BASE_APIS + ((CERTIFICATE_MANAGER_API,) if google_managed_certificate else ())


@dataclass(frozen=True)
class GoogleApisArgs:
    project: str
    apis: tuple[str, ...]


class GoogleApis(pulumi.ComponentResource):
    """One ``gcp.projects.Service`` per API, kept enabled on destroy."""

    services: list[gcp.projects.Service]

    def __init__(self, name: str, args: GoogleApisArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:GoogleApis", name, None, opts)
        self.services = [
            gcp.projects.Service(
                f"{name}-{api.split('.')[0]}",
                project=args.project,
                service=api,
                disable_on_destroy=False,
                disable_dependent_services=False,
                opts=pulumi.ResourceOptions(parent=self),
            )
            for api in args.apis
        ]
        self.register_outputs({"services": [service.service for service in self.services]})


def after_apis(apis: GoogleApis) -> pulumi.ResourceTransformation:
    """A transformation: each Google Cloud resource (but an API itself) depends on every API."""

    def transform(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
        if not args.type_.startswith("gcp:") or args.type_ == SERVICE_TYPE:
            return None
        opts = pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions(depends_on=list(apis.services)))
        return pulumi.ResourceTransformationResult(args.props, opts)

    return transform
