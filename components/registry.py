"""Image: the Artifact Registry repository and the EPP/BBR image built from ``epp/`` and pushed to it.

The build runs wherever ``pulumi up`` runs (Docker with buildx), for ``linux/amd64``, and
authenticates to Artifact Registry with the deployer's short-lived access token, kept secret.
``pulumi preview`` does not build it (a pull request's preview needs neither Docker nor minutes
of build): the plan shows the image as changing and ``pulumi up`` builds and pushes it.
Workloads use :attr:`Registry.image_ref`, the pushed digest-pinned reference
(``<repo>/epp:latest@sha256:...``), so a rebuild rolls the Deployments and a tag cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker_build as docker_build
import pulumi_gcp as gcp

BUILD_CONTEXT = "./epp"
DOCKERFILE = "./epp/Dockerfile"
"""Paths relative to the project directory (where ``pulumi`` runs): stable across machines."""


@dataclass(frozen=True)
class RegistryArgs:
    project: str
    region: str
    repository: str


class Registry(pulumi.ComponentResource):
    """Artifact Registry DOCKER repository + the EPP image pushed to it."""

    repository: gcp.artifactregistry.Repository
    image: docker_build.Image
    image_ref: pulumi.Output[str]

    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:Registry", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        host = f"{args.region}-docker.pkg.dev"

        self.repository = gcp.artifactregistry.Repository(
            f"{name}-repository",
            project=args.project,
            location=args.region,
            repository_id=args.repository,
            format="DOCKER",
            description="Endpoint Picker and Body-Based Router images of gke-llm-gateway",
            opts=child,
        )
        token = gcp.organizations.get_client_config_output().access_token
        self.image = docker_build.Image(
            f"{name}-epp",
            context=docker_build.BuildContextArgs(location=BUILD_CONTEXT),
            dockerfile=docker_build.DockerfileArgs(location=DOCKERFILE),
            platforms=[docker_build.Platform.LINUX_AMD64],
            push=True,
            build_on_preview=False,
            tags=[
                self.repository.repository_id.apply(
                    lambda repository: f"{host}/{args.project}/{repository}/epp:latest"
                )
            ],
            registries=[
                docker_build.RegistryArgs(
                    address=host, username="oauth2accesstoken", password=pulumi.Output.secret(token)
                )
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.repository]),
        )
        self.image_ref = self.image.ref
        self.register_outputs({"repository": self.repository.id, "imageRef": self.image_ref})
