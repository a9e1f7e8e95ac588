"""Leftover network endpoint groups: found and deleted on ``pulumi destroy``, before the subnet goes.

GKE creates a zonal NEG per backend of the Gateway (one per InferencePool and per extension
Service) and deletes it asynchronously once nothing uses it. When the cluster is deleted before its
NEG controller has finished, the NEGs stay, and a NEG still in the subnet stops the subnet's and the
VPC's deletion (``resourceInUseByAnotherResource``; terraform-provider-google#7637).

:class:`NegCleanup` is a resource with nothing to create. It depends on the VPC and the node subnet,
and the cluster depends on it, so on destroy the engine deletes, in this order: the Gateway and its
routes (the load balancer goes with them: the Gateway's finalizer holds its deletion until GKE has
removed the forwarding rule and backend services), the rest of the cluster's objects, the cluster,
then this resource -- whose delete lists the GKE-made NEGs (``k8s1-``/``k8s-`` names) left in the
VPC, deletes them and waits until none is left -- and only then the subnets and the VPC.

Google's REST API is reached with the deployer's Application Default Credentials (the same ones
the Google provider uses); :func:`delete_leftover_negs` takes any :class:`Session`, so tests hand it
recorded responses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pulumi
from pulumi.dynamic import CreateResult, Resource, ResourceProvider

COMPUTE = "https://compute.googleapis.com/compute/v1"
GKE_NEG_PREFIXES = ("k8s1-", "k8s-")
DELETE_TIMEOUT_SECONDS = 900
POLL_SECONDS = 10.0


class Response(Protocol):
    status_code: int

    def json(self) -> Any: ...


class Session(Protocol):
    """What :func:`delete_leftover_negs` needs of an HTTP client (``google.auth``'s AuthorizedSession)."""

    def request(self, method: str, url: str, **kwargs: Any) -> Response: ...


@dataclass(frozen=True)
class LeftoverNeg:
    name: str
    zone: str


class NegCleanupError(RuntimeError):
    """NEGs still in the VPC after the timeout; the message names them and the command to delete them."""


def leftover_negs(session: Session, project: str, network: str) -> list[LeftoverNeg]:
    """GKE-made zonal NEGs of ``network`` (a VPC name), across every zone of the project."""
    found: list[LeftoverNeg] = []
    url = f"{COMPUTE}/projects/{project}/aggregated/networkEndpointGroups"
    page: str | None = None
    while True:
        response = session.request("GET", url, params={"pageToken": page} if page else {})
        if response.status_code != 200:
            raise NegCleanupError(f"listing NEGs of {project} failed: HTTP {response.status_code}")
        body = response.json()
        for scope, items in body.get("items", {}).items():
            for neg in items.get("networkEndpointGroups", []):
                in_network = str(neg.get("network", "")).endswith(f"/global/networks/{network}")
                if in_network and str(neg.get("name", "")).startswith(GKE_NEG_PREFIXES):
                    found.append(LeftoverNeg(neg["name"], scope.removeprefix("zones/")))
        page = body.get("nextPageToken")
        if not page:
            return found


def delete_leftover_negs(
    session: Session,
    project: str,
    network: str,
    *,
    timeout: float = DELETE_TIMEOUT_SECONDS,
    poll: float = POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Delete every leftover NEG of ``network`` and wait until none is left; the number deleted.

    A NEG still attached to a backend service (the load balancer is still being torn down) answers
    400/409 and is tried again on the next round, until ``timeout``.
    """
    deadline = clock() + timeout
    deleted: set[LeftoverNeg] = set()
    while True:
        remaining = leftover_negs(session, project, network)
        if not remaining:
            return len(deleted)
        if clock() >= deadline:
            names = ", ".join(f"{neg.zone}/{neg.name}" for neg in remaining)
            raise NegCleanupError(
                f"network endpoint groups still in VPC {network} after {timeout:.0f} s: {names}. "
                "Delete them (gcloud compute network-endpoint-groups delete NAME --zone ZONE) and run "
                "`pulumi destroy` again"
            )
        for neg in remaining:
            url = f"{COMPUTE}/projects/{project}/zones/{neg.zone}/networkEndpointGroups/{neg.name}"
            status = session.request("DELETE", url).status_code
            if status in (200, 404):
                deleted.add(neg)
        sleep(poll)


def _default_session() -> Session:
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    session: Session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
    return session


class _NegCleanupProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['project']}/{props['network']}", outs=props)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        delete_leftover_negs(_default_session(), str(props["project"]), str(props["network"]))


@dataclass(frozen=True)
class NegCleanupArgs:
    project: str
    network: pulumi.Input[str]
    """The VPC's name (its NEGs are found by their ``network`` URL)."""


class NegCleanup(Resource):
    """Nothing on create; on delete, the leftover NEGs of the VPC are deleted and waited for."""

    def __init__(self, name: str, args: NegCleanupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            _NegCleanupProvider(),
            name,
            {"project": args.project, "network": args.network},
            opts,
        )
