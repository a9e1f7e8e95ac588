"""``promtool test rules`` for every alert: input series, then the alerts that must fire and those
that must not. The rules are the rendering of monitoring.definitions a Prometheus loads."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring.definitions import BBR_JOB, EPP_JOB, Settings, alerts
from monitoring.render import prometheus_rule_file

SETTINGS = Settings(ttft_p95_slo={"m1": 1.0})
EPP = f'job="{EPP_JOB}",pod="epp-0",instance="10.0.0.1:9090"'


def case(alert: str, at: str, series: dict[str, str], fires: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in series.items()],
        "alert_rule_test": [
            {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": f} for f in fires]}
        ],
    }


CASES: dict[str, list[dict[str, Any]]] = {
    "ModelHasNoReadyPod": [
        case("ModelHasNoReadyPod", "10m", {
            f'epp_requests_total{{{EPP},model="m1",outcome="no_endpoint"}}': "0+10x10",
            f'epp_model_ready_endpoints{{{EPP},model="m1"}}': "0x10",
        }, [{"model": "m1", "severity": "critical"}]),
        # requests, and a ready pod: nothing
        case("ModelHasNoReadyPod", "10m", {
            f'epp_requests_total{{{EPP},model="m1",outcome="routed"}}': "0+10x10",
            f'epp_model_ready_endpoints{{{EPP},model="m1"}}': "1x10",
        }, []),
        # no ready pod, but no request either: nothing
        case("ModelHasNoReadyPod", "10m", {
            f'epp_requests_total{{{EPP},model="m1",outcome="routed"}}': "5x10",
            f'epp_model_ready_endpoints{{{EPP},model="m1"}}': "0x10",
        }, []),
        # not yet for its `for`: pending, not firing
        case("ModelHasNoReadyPod", "2m", {
            f'epp_requests_total{{{EPP},model="m1",outcome="no_endpoint"}}': "0+10x10",
            f'epp_model_ready_endpoints{{{EPP},model="m1"}}': "0x10",
        }, []),
    ],
    "RequestsMisrouted": [
        case("RequestsMisrouted", "4m", {
            f'epp_misrouted_total{{{EPP},model="m1",model_server_pod="p2"}}': "0 0 1 1 1",
        }, [{"model": "m1", "model_server_pod": "p2", "severity": "critical"}]),
        case("RequestsMisrouted", "4m", {
            f'epp_misrouted_total{{{EPP},model="m1",model_server_pod="p2"}}': "0x5",
            f'epp_answer_checks_total{{{EPP},model="m1"}}': "0+10x5",
        }, []),
    ],
    "GatewayErrorRatioHigh": [
        case("GatewayErrorRatioHigh", "15m", {
            f'epp_responses_total{{{EPP},model="m1",code="5xx"}}': "0+10x20",
            f'epp_responses_total{{{EPP},model="m1",code="2xx"}}': "0+10x20",
        }, [{"severity": "warning"}]),
        case("GatewayErrorRatioHigh", "15m", {
            f'epp_responses_total{{{EPP},model="m1",code="5xx"}}': "0+1x20",
            f'epp_responses_total{{{EPP},model="m1",code="2xx"}}': "0+100x20",
        }, []),
    ],
    "TtftP95OverSlo": [
        case("TtftP95OverSlo", "20m", {
            'vllm:time_to_first_token_seconds_bucket{model_name="m1",pod="p1",le="0.5"}': "0x25",
            'vllm:time_to_first_token_seconds_bucket{model_name="m1",pod="p1",le="2"}': "0+10x25",
            'vllm:time_to_first_token_seconds_bucket{model_name="m1",pod="p1",le="+Inf"}': "0+10x25",
        }, [{"model_name": "m1", "model": "m1", "severity": "warning"}]),
        case("TtftP95OverSlo", "20m", {
            'vllm:time_to_first_token_seconds_bucket{model_name="m1",pod="p1",le="0.5"}': "0+10x25",
            'vllm:time_to_first_token_seconds_bucket{model_name="m1",pod="p1",le="2"}': "0+10x25",
            'vllm:time_to_first_token_seconds_bucket{model_name="m1",pod="p1",le="+Inf"}': "0+10x25",
            # a model without an SLO is never alerted on
            'vllm:time_to_first_token_seconds_bucket{model_name="m2",pod="p2",le="+Inf"}': "0+10x25",
        }, []),
    ],
    "KvCacheNearlyFull": [
        case("KvCacheNearlyFull", "15m", {
            'vllm:kv_cache_usage_perc{model_name="m1",pod="p1"}': "0.95x20",
        }, [{"model_name": "m1", "pod": "p1", "severity": "warning"}]),
        # full for less than 10 minutes
        case("KvCacheNearlyFull", "15m", {
            'vllm:kv_cache_usage_perc{model_name="m1",pod="p1"}': "0.5x8 0.95x12",
        }, []),
    ],
    "GatewayReplicaDown": [
        case("GatewayReplicaDown", "5m", {
            f"up{{{EPP}}}": "0x5",
            f'up{{job="{BBR_JOB}",pod="bbr-0",instance="10.0.0.2:9090"}}': "1x5",
        }, [{"job": EPP_JOB, "pod": "epp-0", "instance": "10.0.0.1:9090", "severity": "critical"}]),
        case("GatewayReplicaDown", "5m", {f"up{{{EPP}}}": "1x5"}, []),
    ],
    "GatewayComponentMissing": [
        case("GatewayComponentMissing", "5m", {f"up{{{EPP}}}": "1x5"},
             [{"job": BBR_JOB, "severity": "critical"}]),
        case("GatewayComponentMissing", "5m", {
            f"up{{{EPP}}}": "1x5",
            f'up{{job="{BBR_JOB}",pod="bbr-0",instance="10.0.0.2:9090"}}': "1x5",
        }, []),
    ],
    "ApiKeyReloadFailing": [
        case("ApiKeyReloadFailing", "3m", {
            f'bbr_api_key_reloads_total{{job="{BBR_JOB}",pod="bbr-0",result="error"}}': "0 0 1 1",
        }, [{"severity": "warning"}]),
        case("ApiKeyReloadFailing", "3m", {
            f'bbr_api_key_reloads_total{{job="{BBR_JOB}",pod="bbr-0",result="ok"}}': "0 1 2 3",
        }, []),
    ],
    "TenantAtRateLimit": [
        case("TenantAtRateLimit", "10m", {
            f'bbr_api_key_requests_total{{job="{BBR_JOB}",api_key_name="team-a",model="m1",'
            'outcome="rate_limited"}': "0+5x10",
        }, [{"api_key_name": "team-a", "severity": "info"}]),
        case("TenantAtRateLimit", "10m", {
            f'bbr_api_key_requests_total{{job="{BBR_JOB}",api_key_name="team-a",model="m1",'
            'outcome="routed"}': "0+5x10",
        }, []),
    ],
}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is not on PATH: apt-get install -y prometheus (.ci/run does)"
    return found


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    names = {alert.name for alert in alerts(SETTINGS)}
    assert set(CASES) == names
    for name, cases in CASES.items():
        expected = [test["alert_rule_test"][0]["exp_alerts"] for test in cases]
        assert any(expected), f"{name} needs a case that fires"
        assert not all(expected), f"{name} needs a case that must not fire"


def _write(tmp_path: Path, groups: dict[str, Any], tests: list[dict[str, Any]]) -> Path:
    # promtool compares annotations too; they are templates checked by `promtool check rules` below.
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    test_file = tmp_path / "rules_test.yaml"
    test_file.write_text(yaml.safe_dump(
        {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False
    ))
    return test_file


def test_the_rule_file_is_valid_for_promtool(promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(prometheus_rule_file(SETTINGS)))
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("alert", sorted(CASES))
def test_promtool_unit_tests_of_each_alert(promtool: str, tmp_path: Path, alert: str) -> None:
    test_file = _write(tmp_path, prometheus_rule_file(SETTINGS, "1m"), CASES[alert])
    run = subprocess.run([promtool, "test", "rules", test_file], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_wrong_expectation_fails_promtool(promtool: str, tmp_path: Path) -> None:
    wrong = case("RequestsMisrouted", "4m", {
        f'epp_misrouted_total{{{EPP},model="m1",model_server_pod="p2"}}': "0x5",
    }, [{"model": "m1", "model_server_pod": "p2", "severity": "critical"}])
    test_file = _write(tmp_path, prometheus_rule_file(SETTINGS, "1m"), [wrong])
    run = subprocess.run([promtool, "test", "rules", test_file], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
