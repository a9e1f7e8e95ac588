"""The gateway's Envoy configuration: no hidden cap, every failure mapped to JSON, /health wired."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from epp.contract import (
    ERROR_TYPES,
    UPSTREAM_CONNECT_FAILURE,
    UPSTREAM_FAILURE_HEADER,
    UPSTREAM_RESET,
    UPSTREAM_SILENT,
)

from onebox.envoy.bootstrap import (
    PoolRoute,
    gateway_config,
    listener_port,
    passthrough_config,
    round_robin_config,
    unified_gateway_config,
    with_ports,
)
from onebox.envoy.limits import GatewayLimits, GatewayTimeouts
from onebox.envoy.process import envoy_log_level

GEMMA, PHI = "google/gemma-2b-it", "microsoft/Phi-3-mini-4k-instruct"


def per_model(**kwargs: Any) -> dict[str, Any]:
    pools = [
        PoolRoute(name="gemma", models=(GEMMA,), epp="127.0.0.1:9002", endpoints=("127.0.0.1:8000",)),
        PoolRoute(name="phi3", models=(PHI,), epp="127.0.0.1:9012", endpoints=("127.0.0.1:8001",)),
    ]
    return gateway_config(bbr="127.0.0.1:9004", pools=pools, **kwargs)


def manager(config: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return typed


def filters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f["typed_config"] for f in manager(config)["http_filters"]}


CONFIGS = {"per-model-pools": per_model, "unified-pool": lambda **kw: unified_gateway_config(
    epp="127.0.0.1:9002", endpoints=["127.0.0.1:8000"], **kw)}


@pytest.mark.parametrize("mode", CONFIGS)
def test_every_cluster_the_gateway_sends_requests_to_has_the_whole_request_budget(mode: str) -> None:
    config = CONFIGS[mode](limits=GatewayLimits(max_requests=3000))
    traffic = [c for c in config["static_resources"]["clusters"] if not c["name"].startswith("readiness-")]
    expected = {"per-model-pools": {"bbr", "epp-gemma", "epp-phi3"}, "unified-pool": {"epp"}}[mode]
    assert {c["name"] for c in traffic} == {*expected, "original-destination"}
    for cluster in traffic:
        [threshold] = cluster["circuit_breakers"]["thresholds"]
        assert threshold["max_requests"] == threshold["max_pending_requests"] == 3000, cluster["name"]


def test_the_bbr_and_every_epp_cluster_are_sized_not_left_at_envoys_1024() -> None:
    names = {c["name"] for c in per_model()["static_resources"]["clusters"] if "circuit_breakers" in c}
    assert {"bbr", "epp-gemma", "epp-phi3", "original-destination"} <= names


@pytest.mark.parametrize("mode", CONFIGS)
def test_a_failed_processor_call_is_a_503_never_a_pass_through(mode: str) -> None:
    processors = [f for name, f in filters(CONFIGS[mode]()).items() if "ext_proc" in name]
    assert processors
    for processor in processors:
        assert processor["failure_mode_allow"] is False
        assert processor["status_on_error"] == {"code": 503}


def test_slow_clients_are_bounded_by_header_request_and_idle_timeouts() -> None:
    hcm = manager(per_model(timeouts=GatewayTimeouts(request_headers=5, request=30, connection_idle=50)))
    assert (hcm["request_headers_timeout"], hcm["request_timeout"]) == ("5s", "30s")
    assert hcm["common_http_protocol_options"]["idle_timeout"] == "50s"
    assert hcm["http2_protocol_options"]["max_concurrent_streams"] == 100


def test_a_silent_pod_ends_its_request_after_the_upstream_idle_timeout_with_no_retry() -> None:
    routes = manager(per_model(timeouts=GatewayTimeouts(upstream_idle=7)))["route_config"]["virtual_hosts"][0]
    to_pods = [r["route"] for r in routes["routes"] if "route" in r]
    assert to_pods
    for route in to_pods:
        assert route["timeout"] == "0s"  # streams may last minutes
        assert route["retry_policy"] == {"num_retries": 0, "per_try_idle_timeout": "7s"}


def test_client_connections_are_limited_by_the_overload_manager() -> None:
    [monitor] = per_model(limits=GatewayLimits(max_connections=999))["overload_manager"]["resource_monitors"]
    assert monitor["typed_config"]["max_active_downstream_connections"] == 999


def test_every_reply_envoy_makes_itself_is_the_contracts_json_error() -> None:
    mappers = manager(per_model())["local_reply_config"]["mappers"]
    bodies = [m for m in mappers if "body_format_override" in m]
    statuses = set()
    for mapper in bodies:
        body = json.loads(mapper["body_format_override"]["text_format_source"]["inline_string"])
        status = mapper["status_code"]
        statuses.add(status)
        assert body["error"]["code"] == status
        assert body["error"]["type"] == ERROR_TYPES.get(status, "api_error")
        assert mapper["body_format_override"]["content_type"] == "application/json"
        if status == 503:
            assert mapper["headers_to_add"][0]["header"]["key"] == "retry-after"
    assert {502, 503, 504, 408, 500} <= statuses
    # last: the processors' own 429/503 answers keep their body and only gain a Retry-After
    assert "body_format_override" not in mappers[-1]


def test_the_gateways_answers_for_a_pod_that_did_not_answer_say_so_to_the_epp() -> None:
    mappers = manager(per_model())["local_reply_config"]["mappers"]
    said = {}
    for mapper in mappers:
        for header in mapper.get("headers_to_add", []):
            if header["header"]["key"] == UPSTREAM_FAILURE_HEADER:
                flags = tuple(mapper["filter"]["response_flag_filter"]["flags"])
                said[flags] = (mapper["status_code"], header["header"]["value"])
    assert said == {
        ("UF",): (502, UPSTREAM_CONNECT_FAILURE),
        ("UT",): (504, UPSTREAM_SILENT),
        ("URX", "UC", "UR", "UPE"): (502, UPSTREAM_RESET),
    }


def test_health_is_answered_by_envoy_from_the_bbr_every_epp_and_every_pod() -> None:
    health = filters(per_model())["envoy.filters.http.health_check"]
    assert health["pass_through_mode"] is False
    assert health["cluster_min_healthy_percentages"] == {
        "readiness-bbr": {"value": 100.0},
        "readiness-epps": {"value": 50.0},  # one of the two pools' pickers
        "readiness-pods": {"value": 50.0},  # one of the two pods
    }
    first = manager(per_model())["http_filters"][0]["name"]
    assert first == "envoy.filters.http.health_check"  # before the BBR: /health never reaches a processor


def test_a_restarted_envoy_binds_the_ports_it_had() -> None:
    config = with_ports(per_model(), listener=18080, admin=18081)
    assert listener_port(config) == 18080
    assert config["admin"]["address"]["socket_address"]["port_value"] == 18081
    assert listener_port(per_model()) == 0  # the original is untouched


def test_the_box_puts_the_admin_interface_on_a_unix_socket_only_its_owner_may_use(tmp_path: Path) -> None:
    config = with_ports(per_model(), listener=18080, admin=tmp_path / "envoy.sock")
    assert config["admin"]["address"] == {"pipe": {"path": str(tmp_path / "envoy.sock"), "mode": 0o600}}


@pytest.mark.parametrize(("asked", "keys", "level"), [
    ("debug", True, "info"), ("trace", True, "info"), ("info", True, "info"), ("warning", True, "warning"),
    ("debug", False, "debug"),
])  # fmt: skip
def test_with_api_keys_envoy_never_logs_below_info(asked: str, keys: bool, level: str) -> None:
    # Envoy's debug log prints request headers, authorization and x-api-key included.
    assert envoy_log_level(asked, keys=keys) == level


def test_the_path_is_normalised_before_any_route_or_processor_sees_it() -> None:
    for config in (per_model(), CONFIGS["unified-pool"]()):
        hcm = manager(config)
        assert (hcm["normalize_path"], hcm["merge_slashes"]) == (True, True)
        assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
        assert hcm["http_protocol_options"]["accept_http_10"] is True


def test_a_pool_with_a_bad_address_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="fd00::1:9002"):
        PoolRoute(name="gemma", models=(GEMMA,), epp="fd00::1:9002")


def test_with_api_keys_the_unified_pool_puts_the_bbr_in_front_of_its_one_epp() -> None:
    closed = unified_gateway_config(epp="127.0.0.1:9002", bbr=["127.0.0.1:9004", "127.0.0.1:9014"],
                                    endpoints=["127.0.0.1:8000"])  # fmt: skip
    names = [f["name"] for f in manager(closed)["http_filters"]]
    bbr, epp = "envoy.filters.http.ext_proc.bbr", "envoy.filters.http.ext_proc.epp"
    assert names == ["envoy.filters.http.health_check", bbr, epp, "envoy.filters.http.router"]
    # the same front door as per-model pools: request only, never a pass-through, two replicas checked
    assert filters(closed)[bbr] == filters(per_model())[bbr]
    clusters = {c["name"]: c for c in closed["static_resources"]["clusters"]}
    assert len(clusters["bbr"]["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2
    health = filters(closed)["envoy.filters.http.health_check"]["cluster_min_healthy_percentages"]
    assert health["readiness-bbr"] == {"value": 50.0}
    # open (the default): the EPP alone, as before
    assert bbr not in filters(CONFIGS["unified-pool"]())


def test_the_overhead_benchmarks_front_door_is_the_bbr_alone_before_the_clients_destination() -> None:
    door = passthrough_config(bbr="127.0.0.1:9004")
    assert [f["name"] for f in manager(door)["http_filters"]] == [
        "envoy.filters.http.ext_proc.bbr", "envoy.filters.http.router",
    ]  # fmt: skip
    assert {c["name"] for c in door["static_resources"]["clusters"]} == {"bbr", "original-destination"}
    assert [f["name"] for f in manager(passthrough_config())["http_filters"]] == ["envoy.filters.http.router"]


def test_a_request_ended_by_the_stream_idle_timeout_is_not_blamed_on_a_silent_pod() -> None:
    mappers = manager(per_model())["local_reply_config"]["mappers"]

    def body_for(flag: str) -> str:
        flags = [m.get("filter", {}).get("response_flag_filter", {}).get("flags") for m in mappers]
        [mapper] = [m for m, f in zip(mappers, flags, strict=True) if f == [flag]]
        assert mapper["status_code"] == 504
        body = json.loads(mapper["body_format_override"]["text_format_source"]["inline_string"])
        return str(body["error"]["message"])

    timeouts = GatewayTimeouts()
    silent = f"The model server sent nothing for {timeouts.upstream_idle:g} s; the request was ended."
    assert body_for("UT") == silent
    assert f"for {timeouts.stream_idle:g} s" in body_for("SI")
    assert "model server" not in body_for("SI")


def test_the_gateway_closes_idle_pod_connections_before_vllms_five_second_keep_alive() -> None:
    for config in (passthrough_config(), round_robin_config(["127.0.0.1:8000"])):
        for cluster in config["static_resources"]["clusters"]:
            options = cluster["typed_extension_protocol_options"]
            [http] = options.values()
            assert float(http["common_http_protocol_options"]["idle_timeout"].rstrip("s")) < 5
