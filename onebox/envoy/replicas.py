"""Several EPP or BBR replicas behind one Envoy ext_proc cluster, and what Envoy does when one dies.

A request holds one ext_proc stream on one replica for its whole life; Envoy cannot move a stream
that has begun to another replica. So what matters is where *new* streams go:

- spread: ``LEAST_REQUEST`` over the replicas, by streams in flight (a stream lasts as long as
  its request, so the replica with the fewest open streams is the least busy);
- a dead replica gets no new stream at once: a replica killed by the kernel resets its
  connections, and the first stream error on it (a local-origin failure: reset or refused
  connection) ejects it (outlier detection, one failure in a row);
- active gRPC health checks (``grpc.health.v1`` service ``readiness``) on each replica's health
  port, every ``CHECK_INTERVAL``: a replica that hangs, or restarts and is not yet ready, is
  marked down after one failed check (its connections closed), back after one passed check,
  which also lifts an ejection;
- a stream that cannot connect (the replica's port refuses), or is reset before the replica
  answered anything, is retried once on another replica: the request never sees a replica that
  died between two checks. A stream the replica has answered is committed to it: its request
  fails with the replica (a JSON 503 before the answer began; a streamed answer the EPP was
  following breaks off: Envoy cannot go on with a body exchange whose processor died).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from epp.contract import split_host_port
from pydantic import BaseModel, ConfigDict, Field, field_validator

from onebox.envoy.limits import GatewayLimits, GatewayTimeouts, circuit_breakers, seconds

_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_PREVIOUS_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
_READINESS_SERVICE = "readiness"  # the EPP's and BBR's gRPC health service name (epp.health)
CHECK_INTERVAL = 0.5  # seconds between two health checks of one replica


class Replica(BaseModel):
    """One EPP or BBR replica: its ext_proc gRPC address and the port of its gRPC health service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(description="ext_proc gRPC address, host:port ([v6]:port)")
    health_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="gRPC health port on the same host (the EPP's --health-port); None: the ext_proc "
        "port, which serves the health service too",
    )  # fmt: skip

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value


# What the configuration builders take for a BBR or an EPP: one address, one replica, or several.
Replicas = str | Replica | Sequence[str | Replica]


def to_replicas(value: Replicas) -> tuple[Replica, ...]:
    """``value`` as replicas; an address ``host:port`` is a replica checked on that port."""
    items: Sequence[str | Replica] = [value] if isinstance(value, str | Replica) else value
    replicas = tuple(item if isinstance(item, Replica) else Replica(address=item) for item in items)
    if not replicas:
        raise ValueError("at least one replica is needed")
    addresses = [r.address for r in replicas]
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"replica addresses repeat: {addresses}")
    return replicas


def replica_addresses(replicas: Sequence[Replica]) -> list[str]:
    return [r.address for r in replicas]


def http_options(**options: Any) -> dict[str, Any]:
    """A cluster's ``typed_extension_protocol_options``: its upstream ``HttpProtocolOptions``."""
    return {_HTTP_OPTIONS: {"@type": f"type.googleapis.com/{_HTTP_OPTIONS}", **options}}


def http2() -> dict[str, Any]:
    """Cluster protocol options: HTTP/2 upstream (gRPC)."""
    return http_options(explicit_http_config={"http2_protocol_options": {}})


def _endpoint(replica: Replica) -> dict[str, Any]:
    host, port = split_host_port(replica.address)
    endpoint: dict[str, Any] = {"address": {"socket_address": {"address": host, "port_value": port}}}
    if replica.health_port is not None:
        endpoint["health_check_config"] = {"port_value": replica.health_port}
    return {"endpoint": endpoint}


def health_check() -> dict[str, Any]:
    """gRPC health ``readiness`` every ``CHECK_INTERVAL``: one failure marks a replica down, one pass up."""
    interval = seconds(CHECK_INTERVAL)
    return {
        "timeout": interval,
        "interval": interval,
        "no_traffic_interval": interval,  # also while no request flows (a replica may die idle)
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "grpc_health_check": {"service_name": _READINESS_SERVICE},
    }


def outlier_detection() -> dict[str, Any]:
    """Eject a replica on its first local-origin failure (reset or refused connection).

    Only local-origin failures count (``split_external_local_origin_errors``): a replica's gRPC
    answers are never a reason. The ejection lasts ``base_ejection_time`` (times the ejections in
    a row) unless a passed health check lifts it first; every replica may be ejected (a single
    replica then gets Envoy's panic routing: it is tried anyway).
    """
    return {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 1,
        "enforcing_consecutive_local_origin_failure": 100,
        "enforcing_local_origin_success_rate": 0,
        "consecutive_5xx": 1_000_000,  # gRPC streams carry no HTTP 5xx: never the reason
        "enforcing_consecutive_5xx": 0,
        "enforcing_success_rate": 0,
        "interval": "1s",
        "base_ejection_time": "2s",
        "max_ejection_time": "10s",
        "max_ejection_percent": 100,
        "successful_active_health_check_uneject_host": True,
    }


def ext_proc_cluster(
    name: str, replicas: Sequence[Replica], limits: GatewayLimits, timeouts: GatewayTimeouts
) -> dict[str, Any]:
    """The ext_proc cluster ``name`` over ``replicas`` (HTTP/2), health-checked and with ejection."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": seconds(timeouts.connect),
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [_endpoint(r) for r in replicas]}],
        },
        "circuit_breakers": circuit_breakers(limits),
        "typed_extension_protocol_options": http2(),
        "health_checks": [health_check()],
        "outlier_detection": outlier_detection(),
        "close_connections_on_host_health_failure": True,
    }


def stream_retry() -> dict[str, Any]:
    """The ext_proc stream's retry: once, on another replica, when it could not connect at all."""
    return {
        "retry_on": "connect-failure,refused-stream,reset",
        "num_retries": 1,
        "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.02s"},
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": _PREVIOUS_HOSTS},
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }
