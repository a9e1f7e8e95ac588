"""Envoy bootstrap configurations for the one box (plain dicts; ``render`` turns one into YAML).


- ``gateway_config``: the GKE gateway's shape with one pool per model group. Every request goes
  through the BBR (``x-gateway-base-model-name``), is routed on that header to its pool's route,
  where that pool's EPP (a per-route ext_proc override) picks the pod, and an ORIGINAL_DST cluster
  sends it to ``x-gateway-destination-endpoint``.
- ``unified_gateway_config``: one pool holding every model, so one EPP; no BBR, unless it is asked
  for as the front door (``bbr=``: it then checks API keys and answers ``GET /v1/models`` before
  the EPP sees a request, as in per-model pools).
- ``passthrough_config``: Envoy alone, ORIGINAL_DST on a header the client sets (the overhead
  baseline); with ``bbr=``, the BBR as the front door before it (what the key check costs).
- ``round_robin_config``: Envoy round-robin over fixed endpoints (a "plain Kubernetes Service").

The BBR and each pool's EPP may run as several replicas (``Replica``) behind one ext_proc cluster
(``replicas``): Envoy spreads new streams over the replicas it believes healthy and stops sending
to one the moment it fails (see ``replicas`` for how).

Only the API's own methods and paths (``epp.api_routes``) are routed to a pod, matched exactly on the
path Envoy has normalised (``normalize_path``, ``merge_slashes``; an escaped slash is a 400):
``GET /v1/models*`` is answered by the BBR or the EPP and never forwarded, a served path under another
method gets a JSON 405 with ``Allow``, and any other path a JSON 404, from Envoy itself, the same
answers the BBR and the EPP make. Every other answer Envoy makes itself is OpenAI-style JSON too
(``replies``). Every limit and timeout is chosen and explained
in ``limits`` (``GatewayLimits``, ``GatewayTimeouts``); the gateways answer ``GET /health``
(``health``).
"""

from __future__ import annotations

import copy as copy_module
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from epp.api_routes import (
    DEFAULT_ROUTES,
    FORWARD_METHOD,
    MODEL_PATH_PREFIX,
    MODELS_PATH,
    READ_METHODS,
    ApiRoutes,
)
from epp.contract import (
    BASE_MODEL_HEADER,
    DESTINATION_HEADER,
    DESTINATION_METADATA_NAMESPACE,
    MODEL_HEADER,
    SUBSET_HINT_NAMESPACE,
    UPSTREAM_FAILURE_HEADER,
    error_body,
    split_host_port,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator

from onebox.envoy.health import readiness
from onebox.envoy.limits import GatewayLimits, GatewayTimeouts, circuit_breakers, seconds
from onebox.envoy.replicas import (
    Replica,
    Replicas,
    ext_proc_cluster,
    http_options,
    replica_addresses,
    stream_retry,
    to_replicas,
)
from onebox.envoy.replies import local_reply_config

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_EXT_PROC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_BBR_FILTER = "envoy.filters.http.ext_proc.bbr"
_EPP_FILTER = "envoy.filters.http.ext_proc.epp"
_ORIGINAL_DST = "original-destination"
_CONNECTIONS_MONITOR = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)

# How the EPP sees responses (see _epp_processing_mode).
ResponseMode = Literal["streamed", "full-duplex"]


class PoolRoute(BaseModel):
    """One InferencePool behind the gateway: the base models routed to it and its EPP replicas."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    models: tuple[str, ...] = Field(min_length=1, description="base model names routed to this pool")
    epp: tuple[Replica, ...] = Field(
        min_length=1,
        description="the pool's EPP replicas: one gRPC address host:port ([v6]:port), a Replica, or a "
        "list of either",
    )
    endpoints: tuple[str, ...] = Field(
        default=(), description="the pool's model servers (host:port), checked for GET /health only"
    )

    @field_validator("epp", mode="before")
    @classmethod
    def _replicas(cls, value: Replicas) -> tuple[Replica, ...]:
        return to_replicas(value)

    @field_validator("endpoints")
    @classmethod
    def _host_ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            split_host_port(address)
        return value


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _static_cluster(
    name: str,
    addresses: Sequence[str],
    limits: GatewayLimits,
    timeouts: GatewayTimeouts,
) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": _address(*split_host_port(a))}} for a in addresses]
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": seconds(timeouts.connect),
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        "circuit_breakers": circuit_breakers(limits),
        "typed_extension_protocol_options": _pod_protocol_options(timeouts),
    }
    return cluster


def _pod_protocol_options(timeouts: GatewayTimeouts) -> dict[str, Any]:
    """HTTP/1.1 to the pods, an idle connection closed before the pod's keep-alive closes it."""
    return http_options(
        common_http_protocol_options={"idle_timeout": seconds(timeouts.pod_connection_idle)},
        explicit_http_config={"http_protocol_options": {}},
    )


def _original_dst_cluster(header: str, limits: GatewayLimits, timeouts: GatewayTimeouts) -> dict[str, Any]:
    return {
        "name": _ORIGINAL_DST,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": seconds(timeouts.connect),
        "original_dst_lb_config": {"use_http_header": True, "http_header_name": header},
        "circuit_breakers": circuit_breakers(limits),
        "typed_extension_protocol_options": _pod_protocol_options(timeouts),
    }


def _grpc_service(cluster: str) -> dict[str, Any]:
    return {"envoy_grpc": {"cluster_name": cluster}, "timeout": "30s", "retry_policy": stream_retry()}


def _epp_processing_mode(response: ResponseMode | None) -> dict[str, str]:
    """The whole request, full duplex (which needs the trailers too), and the response as asked.

    ``streamed``: response headers, then the body only when the processor asks for it (it does for
    SSE streams and errors, through a mode override). ``full-duplex``: every response chunk.
    ``None``: no response processing (the BBR).
    """
    mode = {
        "request_header_mode": "SEND",
        "request_body_mode": "FULL_DUPLEX_STREAMED",
        "request_trailer_mode": "SEND",
        "response_header_mode": "SKIP",
        "response_body_mode": "NONE",
        "response_trailer_mode": "SKIP",
    }
    if response == "streamed":
        mode.update(response_header_mode="SEND", response_body_mode="STREAMED")
    elif response == "full-duplex":
        mode.update(response_header_mode="SEND", response_body_mode="FULL_DUPLEX_STREAMED",
                    response_trailer_mode="SEND")
    return mode


def _ext_proc_filter(
    name: str, cluster: str, timeouts: GatewayTimeouts, *, response: ResponseMode | None
) -> dict[str, Any]:
    mode = _epp_processing_mode(response)
    config: dict[str, Any] = {
        "@type": _EXT_PROC,
        "grpc_service": _grpc_service(cluster),
        # Never route around the picker; a failed call is a 503 (Envoy's default is 500), which
        # the local reply mapping turns into JSON with Retry-After.
        "failure_mode_allow": False,
        "status_on_error": {"code": 503},
        "message_timeout": seconds(timeouts.ext_proc_message),
        "processing_mode": mode,
        "allow_mode_override": response == "streamed",
    }
    if response is not None:
        config["metadata_options"] = {
            "forwarding_namespaces": {"untyped": [SUBSET_HINT_NAMESPACE]},
            "receiving_namespaces": {"untyped": [DESTINATION_METADATA_NAMESPACE]},
        }
    return {"name": name, "typed_config": config}


def _methods(methods: Sequence[str], *, invert: bool = False) -> dict[str, Any]:
    """A ``:method`` header match: one of ``methods`` (or, inverted, none of them)."""
    match: dict[str, Any] = {"name": ":method"}
    if len(methods) == 1:
        match["string_match"] = {"exact": methods[0]}
    else:
        match["safe_regex_match"] = {"regex": "|".join(methods)}
    if invert:
        match["invert_match"] = True
    return match


def forwarded_matches(routes: ApiRoutes, headers: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """One route match per forwarded API path: that exact path, ``POST``, and ``headers``."""
    method = _methods((FORWARD_METHOD,))
    return [{"path": path, "headers": [*headers, method]} for path in routes.forwarded_paths]


def _direct(name: str, match: dict[str, Any], status: int, message: str,
            headers: Sequence[tuple[str, str]] = (), *, epp: bool = False) -> dict[str, Any]:
    """A route Envoy answers itself with the contract's JSON error; no pool's EPP runs on it unless
    ``epp`` (the BBR always does: every request matches one of these before the BBR has set the model
    header and cleared the route cache)."""
    route: dict[str, Any] = {
        "name": name,
        "match": match,
        "direct_response": {
            "status": status, "body": {"inline_string": error_body(status, message).decode()}
        },
        "response_headers_to_add": [
            {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for key, value in (("content-type", "application/json"), *headers)
        ],
    }
    if not epp:
        route["typed_per_filter_config"] = {_EPP_FILTER: {"@type": _EXT_PROC_PER_ROUTE, "disabled": True}}
    return route


def _gateway_answers(routes: ApiRoutes, *, epp_lists_models: bool) -> list[dict[str, Any]]:
    """The routes after the pods': the model list (answered by the BBR, or by the EPP when
    ``epp_lists_models``; the direct answer only when neither did), 405 on a served path under another
    method, and 404 for everything else."""
    reads = _methods(READ_METHODS)
    answers = [
        _direct(f"models{i}", {**match, "headers": [reads]}, 503,
                "The gateway did not answer for its model list; retry shortly.", epp=epp_lists_models)
        for i, match in enumerate(({"path": MODELS_PATH}, {"prefix": MODEL_PATH_PREFIX}))
    ]
    served = [{"path": path} for path in (*routes.forwarded_paths, MODELS_PATH)]
    for match in [*served, {"prefix": MODEL_PATH_PREFIX}]:
        path = match.get("path", MODEL_PATH_PREFIX)
        allowed = routes.allowed_methods(path)
        refused = {**match, "headers": [_methods(allowed, invert=True)]}
        message = routes.method_not_allowed_message(path)
        allow = (("allow", ", ".join(allowed)),)
        answers.append(_direct(f"method-not-allowed:{path}", refused, 405, message, allow))
    answers.append(_direct("not-found", {"prefix": "/"}, 404, routes.not_found_message))
    return answers


def _listener(
    routes: list[dict[str, Any]],
    filters: list[dict[str, Any]],
    host: str,
    port: int,
    limits: GatewayLimits,
    timeouts: GatewayTimeouts,
) -> dict[str, Any]:
    manager = {
        "@type": _HCM,
        "stat_prefix": "gateway",
        "codec_type": "AUTO",
        "generate_request_id": True,
        # Every answer carries the request's id, the gateway's own replies included (issue 15).
        "always_set_request_id_in_response": True,
        # The path routes match and the BBR and EPPs check is the one a pod gets: dot segments resolved
        # (%2e included), slashes merged, and an escaped slash (%2F, %5C) refused with a 400.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        # HTTP/1.0 is served like 1.1 (a missing Host is the gateway's): its clients get the same JSON
        # answers. Refused, Envoy's 426 would pass the processors' response path and be cut unsent.
        "http_protocol_options": {"accept_http_10": True, "default_host_for_http_10": "gateway"},
        "request_headers_timeout": seconds(timeouts.request_headers),
        "request_timeout": seconds(timeouts.request),
        "stream_idle_timeout": seconds(timeouts.stream_idle),
        "common_http_protocol_options": {"idle_timeout": seconds(timeouts.connection_idle)},
        "http2_protocol_options": {"max_concurrent_streams": limits.max_streams_per_connection},
        "route_config": {
            "name": "gateway",
            # A pod cannot speak for the gateway: the header that says the gateway answered for a
            # pod is its own (the local replies add it after this removal).
            "virtual_hosts": [{"name": "gateway", "domains": ["*"], "routes": routes,
                               "response_headers_to_remove": [UPSTREAM_FAILURE_HEADER]}],
        },
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
        "local_reply_config": local_reply_config(limits, timeouts),
    }
    return {
        "name": "gateway",
        "address": _address(host, port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def _bootstrap(
    listener: dict[str, Any], clusters: list[dict[str, Any]], admin_port: int, limits: GatewayLimits
) -> dict[str, Any]:
    return {
        "admin": {"address": _address("127.0.0.1", admin_port)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _CONNECTIONS_MONITOR,
                        "max_active_downstream_connections": limits.max_connections,
                    },
                }
            ]
        },
    }


def _to_pod_route(timeouts: GatewayTimeouts) -> dict[str, Any]:
    # No overall timeout: completions may stream for minutes. But a pod silent for
    # ``upstream_idle`` (before its first byte or between two) ends the request with a 504: the
    # per-try idle timeout watches the upstream only, never a slow client. No retries.
    return {
        "cluster": _ORIGINAL_DST,
        "timeout": "0s",
        "retry_policy": {"num_retries": 0, "per_try_idle_timeout": seconds(timeouts.upstream_idle)},
    }


def gateway_config(
    *,
    bbr: Replicas,
    pools: Sequence[PoolRoute],
    host: str = "127.0.0.1",
    port: int = 0,
    admin_port: int = 0,
    response_mode: ResponseMode = "streamed",
    limits: GatewayLimits | None = None,
    timeouts: GatewayTimeouts | None = None,
    api: ApiRoutes = DEFAULT_ROUTES,
) -> dict[str, Any]:
    """The gateway with per-model pools: BBR → route on the base model → that pool's EPP → the pod.

    ``bbr`` and each pool's ``epp`` are its replicas (``host:port`` gRPC addresses or ``Replica``s). The
    BBR must be given the served models (``--served-models``) so it answers ``GET /v1/models`` and
    refuses unknown models itself.
    """
    limits, timeouts = limits or GatewayLimits(), timeouts or GatewayTimeouts()
    bbrs = to_replicas(bbr)
    if not pools:
        raise ValueError("gateway_config needs at least one pool")
    seen: dict[str, str] = {}
    for pool in pools:
        for model in pool.models:
            if model in seen:
                raise ValueError(f"model {model!r} is routed to both pool {seen[model]!r} and {pool.name!r}")
            seen[model] = pool.name
    routes: list[dict[str, Any]] = []
    for pool in pools:
        override = {
            "@type": _EXT_PROC_PER_ROUTE,
            "overrides": {"grpc_service": _grpc_service(f"epp-{pool.name}")},
        }
        for model in pool.models:
            model_header = {"name": BASE_MODEL_HEADER, "string_match": {"exact": model}}
            routes.extend(
                {
                    "name": f"{pool.name}:{model}:{match['path']}",
                    "match": match,
                    "route": _to_pod_route(timeouts),
                    "typed_per_filter_config": {_EPP_FILTER: override},
                }
                for match in forwarded_matches(api, [model_header])
            )
    routes.extend(_gateway_answers(api, epp_lists_models=False))
    health_filter, health_clusters = readiness(
        bbrs=replica_addresses(bbrs), epps=[a for p in pools for a in replica_addresses(p.epp)],
        pods=[e for p in pools for e in p.endpoints],
    )  # fmt: skip
    filters = [
        health_filter,
        _ext_proc_filter(_BBR_FILTER, "bbr", timeouts, response=None),
        _ext_proc_filter(_EPP_FILTER, f"epp-{pools[0].name}", timeouts, response=response_mode),
    ]
    clusters = [
        ext_proc_cluster("bbr", bbrs, limits, timeouts),
        *(ext_proc_cluster(f"epp-{pool.name}", pool.epp, limits, timeouts) for pool in pools),
        _original_dst_cluster(DESTINATION_HEADER, limits, timeouts),
        *health_clusters,
    ]
    return _bootstrap(_listener(routes, filters, host, port, limits, timeouts), clusters, admin_port, limits)


def unified_gateway_config(
    *,
    epp: Replicas,
    bbr: Replicas | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    admin_port: int = 0,
    response_mode: ResponseMode = "streamed",
    endpoints: Sequence[str] = (),
    limits: GatewayLimits | None = None,
    timeouts: GatewayTimeouts | None = None,
    api: ApiRoutes = DEFAULT_ROUTES,
) -> dict[str, Any]:
    """The gateway with one pool for every model: one EPP picks among all pods.

    ``epp``: its replicas, as for ``gateway_config``; ``endpoints``: the pool's model servers, checked
    for ``GET /health`` only. ``bbr``: the BBR replicas as the front door, run on every request
    before the EPP (the filter, cluster and readiness check ``gateway_config`` gives it); the BBR
    must then be given the served models, and with an API key list it is the gateway's key check.
    None (the default): no BBR, the EPP alone sees requests.
    """
    limits, timeouts = limits or GatewayLimits(), timeouts or GatewayTimeouts()
    epps = to_replicas(epp)
    bbrs = to_replicas(bbr) if bbr is not None else ()
    routes = [
        *({"name": f"pool:{match['path']}", "match": match, "route": _to_pod_route(timeouts)}
          for match in forwarded_matches(api)),
        *_gateway_answers(api, epp_lists_models=True),
    ]
    health_filter, health_clusters = readiness(
        bbrs=replica_addresses(bbrs), epps=replica_addresses(epps), pods=list(endpoints)
    )
    front_door = [_ext_proc_filter(_BBR_FILTER, "bbr", timeouts, response=None)] if bbrs else []
    filters = [
        health_filter, *front_door, _ext_proc_filter(_EPP_FILTER, "epp", timeouts, response=response_mode)
    ]
    clusters = [
        *([ext_proc_cluster("bbr", bbrs, limits, timeouts)] if bbrs else []),
        ext_proc_cluster("epp", epps, limits, timeouts),
        _original_dst_cluster(DESTINATION_HEADER, limits, timeouts),
        *health_clusters,
    ]
    return _bootstrap(_listener(routes, filters, host, port, limits, timeouts), clusters, admin_port, limits)


def passthrough_config(
    *, header: str = DESTINATION_HEADER, host: str = "127.0.0.1", port: int = 0, admin_port: int = 0,
    limits: GatewayLimits | None = None, timeouts: GatewayTimeouts | None = None, bbr: Replicas | None = None,
) -> dict[str, Any]:
    """Envoy alone: each request goes to the ``ip:port`` its client put in ``header``.

    ``bbr``: the BBR replicas as the front door, run on every request first (as ``gateway_config``
    runs them), with no picker behind: the front door's own cost, measured apart from any EPP.
    """
    limits, timeouts = limits or GatewayLimits(), timeouts or GatewayTimeouts()
    routes = [{"name": "direct", "match": {"prefix": "/"}, "route": _to_pod_route(timeouts)}]
    filters: list[dict[str, Any]] = []
    clusters = [_original_dst_cluster(header, limits, timeouts)]
    if bbr is not None:
        filters.append(_ext_proc_filter(_BBR_FILTER, "bbr", timeouts, response=None))
        clusters.append(ext_proc_cluster("bbr", to_replicas(bbr), limits, timeouts))
    listener = _listener(routes, filters, host, port, limits, timeouts)
    return _bootstrap(listener, clusters, admin_port, limits)


def round_robin_config(
    endpoints: Sequence[str], *, host: str = "127.0.0.1", port: int = 0, admin_port: int = 0,
    limits: GatewayLimits | None = None, timeouts: GatewayTimeouts | None = None,
    by_model: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Envoy round-robin over ``endpoints`` (``ip:port``), blind to models: a plain Kubernetes Service.

    With ``by_model`` (served model name -> its pods' addresses), a request whose
    ``x-gateway-model-name`` header names a model goes round robin over that model's pods only: a
    Service per model behind a router that knows the model (the baseline a picker must beat, with
    no hop of its own: the benchmark's client sets the header). Other requests stay blind.
    """
    limits, timeouts = limits or GatewayLimits(), timeouts or GatewayTimeouts()
    if not endpoints:
        raise ValueError("round_robin_config needs at least one endpoint")
    clusters = [_static_cluster("service", endpoints, limits, timeouts)]
    routes = []
    for i, (model, addresses) in enumerate(sorted((by_model or {}).items())):
        if not addresses:
            raise ValueError(f"round_robin_config: model {model!r} has no pods")
        name = f"service-{i}"
        clusters.append(_static_cluster(name, addresses, limits, timeouts))
        match = {"prefix": "/", "headers": [{"name": MODEL_HEADER, "string_match": {"exact": model}}]}
        routes.append({"name": name, "match": match, "route": {**_to_pod_route(timeouts), "cluster": name}})
    routes.append({"name": "service", "match": {"prefix": "/"},
                   "route": {**_to_pod_route(timeouts), "cluster": "service"}})  # fmt: skip
    listener = _listener(routes, [], host, port, limits, timeouts)
    return _bootstrap(listener, clusters, admin_port, limits)


def render(config: dict[str, Any]) -> str:
    """The configuration as Envoy bootstrap YAML."""
    return yaml.safe_dump(config, sort_keys=False)


def listener_port(config: dict[str, Any]) -> int:
    """The port the configuration's listener asks for (0: any free port)."""
    return int(config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"])


def with_ports(config: dict[str, Any], *, listener: int, admin: int | Path) -> dict[str, Any]:
    """A copy of ``config`` whose listener binds this port (a restart's same port) and whose admin
    interface binds this port or, given a path, a Unix socket only its owner may use (mode 0600)."""
    copy = copy_module.deepcopy(config)
    copy["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listener
    if isinstance(admin, Path):
        copy["admin"]["address"] = {"pipe": {"path": str(admin), "mode": 0o600}}
    else:
        copy["admin"]["address"]["socket_address"]["port_value"] = admin
    return copy
