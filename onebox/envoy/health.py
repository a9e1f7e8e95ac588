"""``GET /health`` at the gateway: 200 while it can route, a JSON 503 while it cannot.

Envoy's health_check filter answers ``/health`` itself (the request goes no further), from the
health of clusters that exist only to be checked:

- ``readiness-bbr`` (per-model pools): the BBR replicas, gRPC health ``readiness``; one must be
  up, since every request passes through one of them;
- ``readiness-epps``: every pool's EPP replicas, gRPC health ``readiness`` (served on their
  ext_proc port);
- ``readiness-pods``: every pool's model servers, ``GET /health``, when they are given.

Each cluster needs one healthy member: the gateway answers 200 while some pool's
picker and some model server are ready (``100 / members`` percent; at least one of them), so a
load balancer keeps sending the other models' traffic while one pool is down. Checked every
second (also while no traffic flows), two failures in a row mark a member down, one success up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from epp.contract import split_host_port

from onebox.envoy.replicas import http2
from onebox.envoy.replies import HEALTH_PATH

_HEALTH_FILTER = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
_READINESS_SERVICE = "readiness"  # the EPP's and BBR's gRPC health service name (epp.health)
_INTERVAL = "1s"


def _check(kind: dict[str, Any]) -> dict[str, Any]:
    return {
        "timeout": "1s",
        "interval": _INTERVAL,
        "no_traffic_interval": _INTERVAL,  # these clusters never carry traffic
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
        **kind,
    }


def _cluster(name: str, addresses: Sequence[str], check: dict[str, Any], *, grpc: bool) -> dict[str, Any]:
    endpoints = [
        {"endpoint": {"address": {"socket_address": dict(zip(("address", "port_value"), split_host_port(a),
                                                             strict=True))}}}
        for a in addresses
    ]
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        "health_checks": [_check(check)],
    }
    if grpc:
        cluster["typed_extension_protocol_options"] = http2()
    return cluster


def _at_least_one(members: int) -> float:
    # Envoy fails the check when healthy < members * percentage / 100: one healthy member passes.
    return 100.0 / members


def readiness(
    *, bbrs: Sequence[str], epps: Sequence[str], pods: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``/health`` filter and the clusters it reads (``bbrs`` empty: no BBR, the unified pool)."""
    grpc_check = {"grpc_health_check": {"service_name": _READINESS_SERVICE}}
    clusters: list[dict[str, Any]] = []
    minimum: dict[str, dict[str, float]] = {}
    if bbrs:
        clusters.append(_cluster("readiness-bbr", bbrs, grpc_check, grpc=True))
        minimum["readiness-bbr"] = {"value": _at_least_one(len(bbrs))}
    clusters.append(_cluster("readiness-epps", epps, grpc_check, grpc=True))
    minimum["readiness-epps"] = {"value": _at_least_one(len(epps))}
    if pods:
        http_check = {"http_health_check": {"path": "/health"}}
        clusters.append(_cluster("readiness-pods", pods, http_check, grpc=False))
        minimum["readiness-pods"] = {"value": _at_least_one(len(pods))}
    health_filter = {
        "name": "envoy.filters.http.health_check",
        "typed_config": {
            "@type": _HEALTH_FILTER,
            "pass_through_mode": False,
            "headers": [{"name": ":path", "string_match": {"exact": HEALTH_PATH}}],
            "cluster_min_healthy_percentages": minimum,
        },
    }
    return health_filter, clusters
