"""A Docker Hub mirror: an Artifact Registry remote repository the nodes pull the vLLM images through.

The vLLM images are ~10 GB on Docker Hub. Pulled directly, every new node fetches them over Cloud
NAT and counts against Docker Hub's anonymous pull limits, and an organisation policy that allows
only Artifact Registry images refuses them. Through a remote repository (``dockerHubMirror``,
default on) the nodes pull from ``<region>-docker.pkg.dev/<project>/docker-hub/...`` over Private
Google Access with their service account (``roles/artifactregistry.reader``); Artifact Registry
fetches each layer from Docker Hub once and serves it from its cache afterwards.

A remote repository serves the upstream manifests unchanged, so the digest resolved from Docker
Hub at preview pins the mirrored reference too.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

REPOSITORY_ID = "docker-hub"


def docker_hub_name(image: str) -> str | None:
    """``vllm/vllm-openai:v1`` -> ``vllm/vllm-openai:v1``; ``ubuntu:24.04`` -> ``library/ubuntu:24.04``;
    a reference to another registry (a host with a dot or a port, or ``localhost``) -> None."""
    first, _, rest = image.partition("/")
    if not rest:
        return f"library/{image}"
    if "." in first or ":" in first or first == "localhost":
        return None
    return image


@dataclass(frozen=True)
class DockerHubMirrorArgs:
    project: str
    region: str


class DockerHubMirror(pulumi.ComponentResource):
    """The remote repository and the prefix that turns a Docker Hub name into its mirrored one."""

    repository: gcp.artifactregistry.Repository
    prefix: pulumi.Output[str]

    def __init__(
        self, name: str, args: DockerHubMirrorArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gke-llm-gateway:index:DockerHubMirror", name, None, opts)
        self.repository = gcp.artifactregistry.Repository(
            f"{name}-repository",
            project=args.project,
            location=args.region,
            repository_id=REPOSITORY_ID,
            format="DOCKER",
            mode="REMOTE_REPOSITORY",
            description="Docker Hub, cached: the vLLM images of gke-llm-gateway",
            remote_repository_config=gcp.artifactregistry.RepositoryRemoteRepositoryConfigArgs(
                description="Docker Hub",
                docker_repository=gcp.artifactregistry.RepositoryRemoteRepositoryConfigDockerRepositoryArgs(
                    public_repository="DOCKER_HUB"
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.prefix = self.repository.repository_id.apply(
            lambda repository: f"{args.region}-docker.pkg.dev/{args.project}/{repository}"
        )
        self.register_outputs({"repository": self.repository.id})

    def mirrored(self, image: str) -> pulumi.Output[str] | None:
        """Where ``image`` (a Docker Hub reference) is pulled from through the mirror; None if elsewhere."""
        name = docker_hub_name(image)
        if name is None:
            return None
        return self.prefix.apply(lambda prefix: f"{prefix}/{name}")
