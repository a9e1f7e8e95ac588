"""Several EPP and BBR replicas behind one ext_proc cluster: spread, checked, ejected at once."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from onebox.box import OneBox, replica_name
from onebox.envoy.bootstrap import PoolRoute, gateway_config, unified_gateway_config
from onebox.envoy.replicas import Replica, to_replicas
from onebox.topology import load_preset

GEMMA = "google/gemma-2b-it"
EPPS = (
    Replica(address="127.0.0.1:9002", health_port=9102),
    Replica(address="127.0.0.1:9003", health_port=9103),
)
BBRS = ["127.0.0.1:9004", "127.0.0.1:9005"]


def clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def two_of_each() -> dict[str, Any]:
    return gateway_config(bbr=BBRS, pools=[PoolRoute(name="gemma", models=(GEMMA,), epp=EPPS)])


def test_every_epp_replica_of_a_pool_is_a_member_of_its_one_ext_proc_cluster() -> None:
    cluster = clusters(two_of_each())["epp-gemma"]
    [group] = cluster["load_assignment"]["endpoints"]
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in group["lb_endpoints"]]
    assert ports == [9002, 9003]
    assert cluster["lb_policy"] == "LEAST_REQUEST"  # the replica with the fewest open streams


def test_each_epp_replica_is_health_checked_over_grpc_on_its_health_port() -> None:
    cluster = clusters(two_of_each())["epp-gemma"]
    [check] = cluster["health_checks"]
    assert check["grpc_health_check"] == {"service_name": "readiness"}
    assert check["unhealthy_threshold"] == 1  # one failed check takes it out
    [group] = cluster["load_assignment"]["endpoints"]
    assert [e["endpoint"]["health_check_config"]["port_value"] for e in group["lb_endpoints"]] == [9102, 9103]
    assert cluster["close_connections_on_host_health_failure"] is True


def test_a_replica_is_ejected_on_its_first_reset_or_refused_connection() -> None:
    for name in ("epp-gemma", "bbr"):
        detection = clusters(two_of_each())[name]["outlier_detection"]
        assert detection["split_external_local_origin_errors"] is True
        assert detection["consecutive_local_origin_failure"] == 1
        assert detection["enforcing_consecutive_local_origin_failure"] == 100
        assert detection["successful_active_health_check_uneject_host"] is True


def test_a_stream_that_never_reached_a_replica_is_retried_on_another_one() -> None:
    config = two_of_each()
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    services = [f["typed_config"]["grpc_service"] for f in hcm["http_filters"] if "ext_proc" in f["name"]]
    assert len(services) == 2
    for service in services:
        retry = service["retry_policy"]
        assert retry["num_retries"] == 1
        assert set(retry["retry_on"].split(",")) == {"connect-failure", "refused-stream", "reset"}
        assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"


def test_the_gateway_is_healthy_while_one_bbr_replica_of_two_is() -> None:
    hcm = two_of_each()["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    health = hcm["http_filters"][0]["typed_config"]
    assert health["cluster_min_healthy_percentages"]["readiness-bbr"] == {"value": 50.0}
    bbr = clusters(two_of_each())["readiness-bbr"]
    assert len(bbr["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2


def test_the_unified_pool_takes_replicas_too() -> None:
    cluster = clusters(unified_gateway_config(epp=list(EPPS)))["epp"]
    assert len(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2


def test_one_address_is_still_one_replica_checked_on_that_port() -> None:
    [replica] = to_replicas("127.0.0.1:9002")
    assert replica == Replica(address="127.0.0.1:9002")
    cluster = clusters(unified_gateway_config(epp="127.0.0.1:9002"))["epp"]
    [member] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert "health_check_config" not in member["endpoint"]


@pytest.mark.parametrize("value", [[], ["127.0.0.1:1", "127.0.0.1:1"]])
def test_no_replica_or_a_repeated_one_is_refused(value: list[str]) -> None:
    with pytest.raises(ValueError, match="replica"):
        to_replicas(value)


def test_replicas_are_numbered_only_when_there_are_several() -> None:
    assert replica_name("epp-gemma", 0, 1) == "epp-gemma"
    assert [replica_name("bbr", i, 2) for i in range(2)] == ["bbr-0", "bbr-1"]


@pytest.mark.parametrize("field", ["epp_replicas", "bbr_replicas"])
def test_a_box_with_no_picker_replica_is_refused_naming_the_setting(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        OneBox(load_preset("gpu"), **{field: 0})  # type: ignore[arg-type]


def _sample(text: str, name: str, labels: str = "") -> float:
    """The value of ``name{labels}`` in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_two_epp_replicas_each_learn_every_pick_of_the_pool_whichever_replica_made_it() -> None:
    system = "You answer questions about bicycles, briefly and politely. " * 20
    async with OneBox(load_preset("gpu"), epp_replicas=2, time_scale=0) as box:
        replicas = box.epps["gemma"]
        async with httpx.AsyncClient(base_url=box.gateway_url, timeout=30) as client:
            for i in range(12):
                answer = await client.post("/v1/completions", json={
                    "model": GEMMA, "prompt": f"{system} question {i}?", "max_tokens": 4,
                })
                assert answer.status_code == 200
            counts: list[tuple[float, float]] = []
            for _ in range(200):  # the datagrams are on their way for a few ms at most
                counts = []
                for replica in replicas:
                    text = (await client.get(f"http://127.0.0.1:{replica.metrics_port}/metrics")).text
                    sent = _sample(text, "epp_peer_picks_sent_total")
                    applied = _sample(text, "epp_peer_picks_received_total", '{outcome="applied"}')
                    counts.append((sent, applied))
                if all(sent + applied >= 12 for sent, applied in counts):
                    break
                await asyncio.sleep(0.05)
    # Every pick (the box's own start-up request included) is known to both replicas: the one that
    # made it and, through it, the other; the hash seeds agree, so every pick was applied whole.
    total = sum(sent for sent, _ in counts)
    assert total >= 12
    for sent, applied in counts:
        assert sent + applied == total
