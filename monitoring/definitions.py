"""The alerts and dashboard panels, written once.

``monitoring.render`` turns them into a local Prometheus rule file, GMP ``Rules`` and a Cloud
Monitoring dashboard; the one box's Prometheus and a GKE stack evaluate the same PromQL. Every query
reads metrics under the names the components export: the EPP's and BBR's ``epp_*`` / ``bbr_*``
(``epp.telemetry``) and vLLM's ``vllm:*``. Scrape jobs are named by ``JOBS`` in both places (the GMP
PodMonitoring's name is its job), and every target carries a ``pod`` label.

What each alert means and what to do about it: docs/monitoring.md (its anchors are the alert names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

EPP_JOB = "llm-gateway-epp"
BBR_JOB = "llm-gateway-bbr"
VLLM_JOB = "llm-gateway-vllm"
JOBS = (EPP_JOB, BBR_JOB, VLLM_JOB)

RULE_GROUP = "llm-gateway"
RUNBOOK = "docs/monitoring.md"

DURATION = re.compile(r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$")
"""A Prometheus duration (``30s``, ``5m``, ``1h30m``; ``0`` for none)."""


@dataclass(frozen=True)
class ModelCost:
    """What one model's ready pod costs: its accelerators and their price per hour."""

    model: str
    accelerators_per_pod: int
    price_per_accelerator_hour: float


@dataclass(frozen=True)
class Settings:
    """What an environment tunes: windows, thresholds, SLOs and prices (the GKE stack's from its
    config, the one box's short enough for a test)."""

    window: str = "5m"
    """The range of every rate() and increase()."""
    no_ready_pod_for: str = "2m"
    five_xx_ratio: float = 0.05
    five_xx_for: str = "5m"
    ttft_p95_slo: dict[str, float] = field(default_factory=dict)
    """Seconds, by served model name; a model without one gets no TTFT alert."""
    ttft_for: str = "10m"
    kv_cache_ratio: float = 0.9
    kv_cache_for: str = "10m"
    replica_down_for: str = "2m"
    rate_limited_for: str = "5m"
    costs: tuple[ModelCost, ...] = ()

    def __post_init__(self) -> None:
        for name in ("window", "no_ready_pod_for", "five_xx_for", "ttft_for", "kv_cache_for",
                     "replica_down_for", "rate_limited_for"):
            value = getattr(self, name)
            if not DURATION.fullmatch(value):
                raise ValueError(f"{name}: {value!r} is not a Prometheus duration (e.g. 30s, 5m, 1h)")


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Query:
    legend: str
    expr: str


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = ""


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def alerts(settings: Settings) -> list[Alert]:
    """Every alert, in the order the runbook lists them."""
    w = settings.window
    result = [
        Alert(
            "ModelHasNoReadyPod",
            f'(sum by (model) (rate(epp_requests_total{{model!~"none|other"}}[{w}])) > 0)'
            " and on (model) (max by (model) (epp_model_ready_endpoints) == 0)",
            settings.no_ready_pod_for, "critical",
            "Requests for {{ $labels.model }} arrive but no pod serving it is ready: they get 503s.",
        ),
        Alert(
            "RequestsMisrouted",
            f"sum by (model, model_server_pod) (increase(epp_misrouted_total[{w}])) > 0",
            "0s", "critical",
            "Answers for {{ $labels.model }} came from another model (pod {{ $labels.model_server_pod }}).",
        ),
        Alert(
            "GatewayErrorRatioHigh",
            f'sum(rate(epp_responses_total{{code="5xx"}}[{w}])) / sum(rate(epp_responses_total[{w}]))'
            f" > {settings.five_xx_ratio:g}",
            settings.five_xx_for, "warning",
            f"More than {settings.five_xx_ratio:.0%} of answers are 5xx "
            "({{ $value | humanizePercentage }}).",
        ),
    ]
    for model, slo in sorted(settings.ttft_p95_slo.items()):
        result.append(Alert(
            "TtftP95OverSlo",
            "histogram_quantile(0.95, sum by (le, model_name) "
            f'(rate(vllm:time_to_first_token_seconds_bucket{{model_name="{_quote(model)}"}}[{w}])))'
            f" > {slo:g}",
            settings.ttft_for, "warning",
            "TTFT p95 of {{ $labels.model_name }} is {{ $value | humanizeDuration }}, "
            f"over its SLO of {slo:g}s.",
            {"model": model},
        ))
    result += [
        Alert(
            "KvCacheNearlyFull",
            f"max by (model_name, pod) (vllm:kv_cache_usage_perc) > {settings.kv_cache_ratio:g}",
            settings.kv_cache_for, "warning",
            "KV cache of {{ $labels.pod }} ({{ $labels.model_name }}) is "
            "{{ $value | humanizePercentage }} full.",
        ),
        Alert(
            "GatewayReplicaDown",
            f'up{{job=~"{EPP_JOB}|{BBR_JOB}"}} == 0',
            settings.replica_down_for, "critical",
            "{{ $labels.job }} replica {{ $labels.pod }} does not answer its metrics scrape.",
        ),
        Alert(
            "GatewayComponentMissing",
            f'absent(up{{job="{EPP_JOB}"}}) or absent(up{{job="{BBR_JOB}"}})',
            settings.replica_down_for, "critical",
            "No EPP or no BBR replica is scraped at all.",
        ),
        Alert(
            "ApiKeyReloadFailing",
            f'sum(increase(bbr_api_key_reloads_total{{result="error"}}[{w}])) > 0',
            "0s", "warning",
            "The front door failed to re-read the API key file; it keeps serving the last good list.",
        ),
        Alert(
            "TenantAtRateLimit",
            f'sum by (api_key_name) (rate(bbr_api_key_requests_total{{outcome="rate_limited"}}[{w}])) > 0',
            settings.rate_limited_for, "info",
            "API key {{ $labels.api_key_name }} keeps hitting its requestsPerMinute limit (429s).",
        ),
    ]
    return result


def _quantiles(metric: str, window: str) -> tuple[Query, ...]:
    return tuple(
        Query(f"p{q} {{{{model_name}}}}",
              f"histogram_quantile(0.{q}, sum by (le, model_name) (rate({metric}_bucket[{window}])))")
        for q in (50, 95, 99)
    )


def _panel(title: str, legend: str, expr: str, unit: str = "") -> Panel:
    return Panel(title, (Query(legend, expr),), unit)


def cost_per_hour(settings: Settings) -> str | None:
    """Dollars per hour by model: ready pods x accelerators per pod x price per accelerator-hour."""
    terms = [
        f'max by (model) (epp_model_ready_endpoints{{model="{_quote(c.model)}"}})'
        f" * {c.accelerators_per_pod * c.price_per_accelerator_hour:g}"
        for c in settings.costs
    ]
    return " or ".join(f"({t})" for t in terms) if terms else None


def panels(settings: Settings) -> list[Panel]:
    """The dashboard's panels, each query returning at least one series on a serving gateway."""
    w = settings.window
    scheduling = f"rate(epp_scheduling_duration_seconds_bucket[{w}])"
    ext_proc = f'job=~"{EPP_JOB}|{BBR_JOB}"'
    result = [
        _panel("Requests/s by model and outcome", "{{model}} {{outcome}}",
               f"sum by (model, outcome) (rate(epp_requests_total[{w}]))", "1/s"),
        _panel("Answers/s by status class", "{{model}} {{code}}",
               f"sum by (model, code) (rate(epp_responses_total[{w}]))", "1/s"),
        Panel("Misrouted answers/s (of answers checked)",
              (Query("{{model}}", f"sum by (model) (rate(epp_misrouted_total[{w}]))"
                     f" or (sum by (model) (rate(epp_answer_checks_total[{w}])) * 0)"),
               Query("checked {{model}}", f"sum by (model) (rate(epp_answer_checks_total[{w}]))")), "1/s"),
        Panel("TTFT (vLLM)", _quantiles("vllm:time_to_first_token_seconds", w), "s"),
        Panel("Inter-token latency (vLLM)", _quantiles("vllm:inter_token_latency_seconds", w), "s"),
        Panel("End-to-end latency (vLLM)", _quantiles("vllm:e2e_request_latency_seconds", w), "s"),
        _panel("Queued requests by pod", "{{model_name}} {{pod}}",
               "sum by (model_name, pod) (vllm:num_requests_waiting)"),
        _panel("Running requests by pod", "{{model_name}} {{pod}}",
               "sum by (model_name, pod) (vllm:num_requests_running)"),
        _panel("KV-cache use by pod", "{{model_name}} {{pod}}",
               "max by (model_name, pod) (vllm:kv_cache_usage_perc)", "ratio"),
        _panel("Ready pods by model", "{{model}}", "max by (model) (epp_model_ready_endpoints)"),
        Panel("Pool averages (upstream gauges)",
              (Query("queue {{name}}", "max by (name) (inference_pool_average_queue_size)"),
               Query("KV cache {{name}}", "max by (name) (llm_d_epp_average_kv_cache_utilization)"))),
        _panel("Output tokens/s by model", "{{model_name}}",
               f"sum by (model_name) (rate(vllm:generation_tokens_total[{w}]))", "1/s"),
        _panel("Tokens/s by API key name", "{{api_key_name}} {{kind}}",
               f"sum by (api_key_name, kind) (rate(epp_api_key_tokens_total[{w}]))", "1/s"),
        Panel("EPP scheduling latency",
              (Query("p99", f"histogram_quantile(0.99, sum by (le) ({scheduling}))"),
               Query("p50", f"histogram_quantile(0.5, sum by (le) ({scheduling}))")), "s"),
        _panel("EPP and BBR CPU (cores)", "{{job}} {{pod}}",
               f"sum by (job, pod) (rate(process_cpu_seconds_total{{{ext_proc}}}[{w}]))"),
    ]
    hourly = cost_per_hour(settings)
    if hourly is not None:
        tokens = (f'label_replace(sum by (model_name) (rate(vllm:generation_tokens_total[{w}])), '
                  '"model", "$1", "model_name", "(.*)")')
        result += [
            Panel("Cost: $/hour by model (ready pods x accelerators x price)",
                  (Query("{{model}}", hourly),), "USD/h"),
            Panel("Cost: $ per million output tokens by model",
                  (Query("{{model}}", f"({hourly}) / on (model) ({tokens} * 3600) * 1e6"),), "USD"),
        ]
    return result
