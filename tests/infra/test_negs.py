"""The NEG clean-up run on destroy, against recorded Compute Engine answers (no network)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from components.negs import COMPUTE, NegCleanupError, delete_leftover_negs

PROJECT, VPC = "my-gcp-project", "llm-gateway-gpu-vpc"
LIST = f"{COMPUTE}/projects/{PROJECT}/aggregated/networkEndpointGroups"


def _neg(name: str, network: str = VPC) -> dict[str, Any]:
    return {
        "name": name,
        "network": f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/global/networks/{network}",
    }


@dataclass
class _Answer:
    status_code: int
    body: Any = None

    def json(self) -> Any:
        return self.body


@dataclass
class RecordedCompute:
    """Answers list calls from a script of pages, deletes from a set of names still attached."""

    listings: list[dict[str, Any]]
    attached: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def request(self, method: str, url: str, **kwargs: Any) -> _Answer:
        self.requests.append((method, url))
        if method == "GET":
            return _Answer(200, self.listings.pop(0) if len(self.listings) > 1 else self.listings[0])
        name = url.rsplit("/", 1)[1]
        return _Answer(400 if name in self.attached else 200, {})


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_leftover_gke_negs_of_the_vpc_are_deleted_and_waited_for() -> None:
    zone = {"networkEndpointGroups": [_neg("k8s1-abc-llm-gateway-gemma-pool-54321-1"), _neg("my-own-neg")]}
    other_vpc = {"networkEndpointGroups": [_neg("k8s1-zzz-other", network="default")]}
    compute = RecordedCompute(
        [
            {"items": {"zones/us-central1-a": zone, "zones/us-central1-b": other_vpc}},
            {"items": {"zones/us-central1-b": other_vpc}},
        ]
    )
    clock = _Clock()

    deleted = delete_leftover_negs(compute, PROJECT, VPC, sleep=clock.sleep, clock=clock)

    assert deleted == 1
    deletes = [url for method, url in compute.requests if method == "DELETE"]
    assert deletes == [
        f"{COMPUTE}/projects/{PROJECT}/zones/us-central1-a/networkEndpointGroups/k8s1-abc-llm-gateway-gemma-pool-54321-1"
    ]  # not a NEG of another VPC, nor one GKE did not make


def test_a_neg_still_attached_is_retried_and_named_with_the_fix_when_time_runs_out() -> None:
    listing = {"items": {"zones/us-central1-a": {"networkEndpointGroups": [_neg("k8s1-stuck")]}}}
    compute = RecordedCompute([listing], attached={"k8s1-stuck"})
    clock = _Clock()

    with pytest.raises(NegCleanupError, match=r"us-central1-a/k8s1-stuck.*network-endpoint-groups delete"):
        delete_leftover_negs(compute, PROJECT, VPC, timeout=30, poll=10, sleep=clock.sleep, clock=clock)
    assert sum(1 for method, _ in compute.requests if method == "DELETE") == 3


def test_pages_are_followed() -> None:
    first = {"items": {"zones/a": {"networkEndpointGroups": [_neg("k8s1-one")]}}, "nextPageToken": "p2"}
    second = {"items": {"zones/b": {"networkEndpointGroups": [_neg("k8s1-two")]}}}
    compute = RecordedCompute([first, second, {"items": {}}])
    clock = _Clock()

    assert delete_leftover_negs(compute, PROJECT, VPC, sleep=clock.sleep, clock=clock) == 2


def test_a_failed_listing_is_an_error_not_an_empty_vpc() -> None:
    class Denied:
        def request(self, method: str, url: str, **kwargs: Any) -> _Answer:
            return _Answer(403, {"error": {"message": "denied"}})

    with pytest.raises(NegCleanupError, match="HTTP 403"):
        delete_leftover_negs(Denied(), PROJECT, VPC)
