"""The stacks' monitoring: GMP PodMonitorings and Rules, the Cloud Monitoring dashboard, the receivers,
all rendered from monitoring.definitions exactly as the one box's Prometheus gets them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from components.config import ConfigError, PlatformConfig
from components.monitoring import monitoring_settings
from monitoring.definitions import JOBS, panels
from monitoring.render import dashboard_queries, rule_groups
from render import StackRun, load_stack_config, render_stack
from tests.infra.conftest import of_type

PODMONITORING = "kubernetes:monitoring.googleapis.com/v1:PodMonitoring"
RULES = "kubernetes:monitoring.googleapis.com/v1:Rules"
DASHBOARD = "gcp:monitoring/dashboard:Dashboard"
SECRET = "kubernetes:core/v1:Secret"


def _config(stack: str) -> PlatformConfig:
    _, config = load_stack_config(stack)
    return PlatformConfig.model_validate(config["gke-llm-gateway:platform"])


def _dashboard(run: StackRun) -> dict[str, Any]:
    [board] = of_type(run, DASHBOARD)
    document: dict[str, Any] = json.loads(board.props["dashboardJson"])
    return document


def test_each_stack_scrapes_vllm_the_epps_and_the_bbr(stack_run: StackRun) -> None:
    monitorings = {r.props["metadata"]["name"]: r.props["spec"] for r in of_type(stack_run, PODMONITORING)}
    assert set(monitorings) == set(JOBS)
    assert monitorings["llm-gateway-vllm"]["endpoints"][0]["port"] == "http"
    assert monitorings["llm-gateway-epp"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "epp"}}
    assert monitorings["llm-gateway-bbr"]["endpoints"][0]["port"] == "metrics"


def test_the_rules_are_the_definitions_rendered_as_the_box_gets_them(stack_run: StackRun) -> None:
    [rules] = of_type(stack_run, RULES)
    settings = monitoring_settings(_config(stack_run.stack))
    assert rules.props["spec"]["groups"] == rule_groups(settings, "30s")
    names = {rule["alert"] for rule in rules.props["spec"]["groups"][0]["rules"]}
    assert {"ModelHasNoReadyPod", "RequestsMisrouted", "GatewayErrorRatioHigh", "KvCacheNearlyFull",
            "GatewayReplicaDown", "ApiKeyReloadFailing", "TenantAtRateLimit"} <= names


def test_the_dashboard_queries_are_the_panels_queries(stack_run: StackRun) -> None:
    settings = monitoring_settings(_config(stack_run.stack))
    expected = [query.expr for panel in panels(settings) for query in panel.queries]
    assert dashboard_queries(_dashboard(stack_run)) == expected
    titles = [tile["widget"]["title"] for tile in _dashboard(stack_run)["mosaicLayout"]["tiles"]]
    assert any(title.startswith("Cost: $/hour") for title in titles)
    assert any("per million output tokens" in title for title in titles)


def test_the_cost_query_multiplies_ready_pods_by_accelerators_and_price(gpu: StackRun) -> None:
    [hourly] = [q for q in dashboard_queries(_dashboard(gpu)) if q.startswith("(max by (model)")][:1]
    # two T4 models, one GPU per pod, at the default on-demand price
    assert 'epp_model_ready_endpoints{model="google/gemma-2b-it"}) * 0.35' in hourly
    assert 'epp_model_ready_endpoints{model="microsoft/Phi-3-mini-4k-instruct"}) * 0.35' in hourly


def test_the_dashboard_url_is_a_stack_output(stack_run: StackRun) -> None:
    url = stack_run.outputs["dashboardUrl"]
    assert url.startswith("https://console.cloud.google.com/monitoring/dashboards/builder/")
    assert url.endswith("?project=my-gcp-project")


def test_a_stack_without_receivers_gets_no_alertmanager_config(gpu: StackRun) -> None:
    assert [s for s in of_type(gpu, SECRET) if s.props["metadata"]["name"] == "alertmanager"] == []


def test_receivers_become_the_managed_alertmanager_config_with_the_webhook_secret() -> None:
    email = {"to": ["oncall@example.com"], "smarthost": "smtp.example.com:587",
             "fromAddress": "gw@example.com"}
    run = render_stack(
        "gpu",
        {"monitoring": {"email": email, "ttftP95Slo": {"google/gemma-2b-it": "1500ms"}}},
        secrets={"alertWebhookUrl": "https://hooks.example.com/T0/abc"},
    )
    [secret] = [s for s in of_type(run, SECRET) if s.props["metadata"]["name"] == "alertmanager"]
    assert secret.props["metadata"]["namespace"] == "gmp-public"
    config = yaml.safe_load(secret.props["stringData"]["alertmanager.yaml"])
    [receiver] = config["receivers"]
    assert receiver["webhook_configs"][0]["url"] == "https://hooks.example.com/T0/abc"
    assert receiver["email_configs"][0]["to"] == "oncall@example.com"
    [rules] = of_type(run, RULES)
    ttft = [r for r in rules.props["spec"]["groups"][0]["rules"] if r["alert"] == "TtftP95OverSlo"]
    assert len(ttft) == 1
    assert ttft[0]["expr"].endswith("> 1.5")
    assert ttft[0]["labels"]["model"] == "google/gemma-2b-it"


def test_monitoring_can_be_turned_off() -> None:
    run = render_stack("tpu", {"monitoring": {"enabled": False}})
    assert of_type(run, PODMONITORING) == []
    assert of_type(run, DASHBOARD) == []
    assert "dashboardUrl" not in run.outputs


BAD = {
    "an unknown field": ({"monitoring": {"slo": {}}}, "platform.monitoring.slo", "unknown field"),
    "a negative price": (
        {"monitoring": {"pricePerAcceleratorHour": {"nvidia-tesla-t4": -1}}},
        "platform.monitoring.pricePerAcceleratorHour.nvidia-tesla-t4", "greater than or equal to 0",
    ),
    "an SLO that is no duration": (
        {"monitoring": {"ttftP95Slo": {"google/gemma-2b-it": "2 seconds"}}},
        "platform.monitoring.ttftP95Slo.google/gemma-2b-it", "is not a duration",
    ),
    "an SLO for a model the stack does not serve": (
        {"monitoring": {"ttftP95Slo": {"gpt-4": "2s"}}},
        "platform.monitoring.ttftP95Slo.gpt-4", "not a served model name",
    ),
    "an error ratio above 1": (
        {"monitoring": {"errorRatio": 5}}, "platform.monitoring.errorRatio", "less than",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_monitoring_config_names_the_field_and_registers_nothing(case: str) -> None:
    overrides, field, problem = BAD[case]
    run = render_stack("gpu", overrides, check=False)
    assert isinstance(run.error, ConfigError)
    [message] = run.error.errors
    assert message.startswith(f"{field}: "), message
    assert problem in message
    assert run.resources == []


def test_a_webhook_url_must_be_a_secret_url() -> None:
    run = render_stack("gpu", secrets={"alertWebhookUrl": "hooks.example.com"}, check=False)
    assert isinstance(run.error, ConfigError)
    assert run.error.errors == ["alertWebhookUrl: is not an http(s) URL"]
    assert run.resources == []
