"""Shared mocked runs of the committed stacks (one per stack per session) and lookup helpers."""

from __future__ import annotations

from typing import Any

import pytest

from render import RegisteredResource, StackRun, kubernetes_objects, render_stack

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
POOL = "kubernetes:inference.networking.k8s.io/v1:InferencePool"
HEALTH_CHECK_POLICY = "kubernetes:networking.gke.io/v1:HealthCheckPolicy"
HTTP_ROUTE = "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"
GATEWAY = "kubernetes:gateway.networking.k8s.io/v1:Gateway"
CRD = "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"
NODE_POOL = "gcp:container/nodePool:NodePool"
CLUSTER = "gcp:container/cluster:Cluster"
SUBNET = "gcp:compute/subnetwork:Subnetwork"
IMAGE = "docker-build:index:Image"


@pytest.fixture(scope="session")
def gpu() -> StackRun:
    return render_stack("gpu")


@pytest.fixture(scope="session")
def tpu() -> StackRun:
    return render_stack("tpu")


@pytest.fixture(scope="session", params=["gpu", "tpu"])
def installed_crd(request: pytest.FixtureRequest) -> StackRun:
    """A committed stack switched to ``inferencePoolCrd: install`` (a cluster without GKE's CRD)."""
    return render_stack(request.param, {"inferencePoolCrd": "install"})


@pytest.fixture(scope="session", params=["gpu", "tpu"])
def stack_run(request: pytest.FixtureRequest, gpu: StackRun, tpu: StackRun) -> StackRun:
    return {"gpu": gpu, "tpu": tpu}[request.param]


def of_type(run: StackRun | list[RegisteredResource], token: str) -> list[RegisteredResource]:
    resources = run.resources if isinstance(run, StackRun) else run
    return [r for r in resources if r.type == token]


def named(run: StackRun, token: str, name: str) -> RegisteredResource:
    """The Kubernetes object of type ``token`` whose metadata.name is ``name``."""
    matches = [r for r in of_type(run, token) if r.props.get("metadata", {}).get("name") == name]
    assert len(matches) == 1, f"expected one {token} named {name}, found {len(matches)}"
    return matches[0]


def gcp_named(run: StackRun, token: str, name: str) -> RegisteredResource:
    matches = [r for r in of_type(run, token) if r.props.get("name") == name]
    assert len(matches) == 1, f"expected one {token} named {name}, found {len(matches)}"
    return matches[0]


def pod_spec(resource: RegisteredResource) -> dict[str, Any]:
    spec = resource.props["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def objects(run: StackRun) -> list[dict[str, Any]]:
    return kubernetes_objects(run.resources)
