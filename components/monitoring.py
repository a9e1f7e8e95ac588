"""Monitoring on GKE: Google Managed Prometheus collects, a Cloud Monitoring dashboard shows, GMP Rules alert.

- ``PodMonitoring`` for the vLLM pods (``/metrics`` on their ``http`` port), the EPPs and the BBR
  (their ``metrics`` port); each one's name is the ``job`` label the queries use
  (``monitoring.definitions.JOBS``), and GMP adds ``pod`` and ``namespace``;
- ``Rules`` with every alert of ``monitoring.definitions`` (the same PromQL the one box's Prometheus
  evaluates), SLOs and thresholds from ``platform.monitoring``;
- a ``gcp.monitoring.Dashboard`` of the same definitions' panels, cost panels included (ready pods
  x accelerators per pod x price per accelerator-hour); its URL is the stack output ``dashboardUrl``;
- with receivers (``platform.monitoring.email``, the secret ``alertWebhookUrl``), the managed
  Alertmanager's config: the Secret ``alertmanager`` in ``gmp-public``. Without any, alerts are
  still evaluated and show in the managed Alertmanager (docs/monitoring.md says how to look).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s
import yaml

from components.config import PlatformConfig, duration_seconds
from components.podspec import SERVING_LABEL, labels
from components.secrets import as_secret
from monitoring.definitions import BBR_JOB, EPP_JOB, VLLM_JOB, ModelCost, Settings
from monitoring.render import GMP_API_VERSION, dashboard, gmp_rules

GMP_PUBLIC = "gmp-public"
ALERTMANAGER_SECRET = "alertmanager"
SCRAPE_INTERVAL = "15s"


def monitoring_settings(cfg: PlatformConfig) -> Settings:
    """The definitions' settings for a stack: its SLOs, 5xx threshold and accelerator prices."""
    monitoring = cfg.monitoring
    return Settings(
        five_xx_ratio=monitoring.error_ratio,
        ttft_p95_slo={model: duration_seconds(text) for model, text in monitoring.ttft_p95_slo.items()},
        costs=tuple(
            ModelCost(m.served_name, m.accelerator_count, monitoring.price(m.accelerator)) for m in cfg.models
        ),
    )


def pod_monitorings(namespace: str) -> list[dict[str, Any]]:
    """The three PodMonitorings (plain objects, as applied)."""

    def monitoring(job: str, selector: dict[str, str], port: str) -> dict[str, Any]:
        return {
            "apiVersion": GMP_API_VERSION,
            "kind": "PodMonitoring",
            "metadata": {"name": job, "namespace": namespace, "labels": labels("podmonitoring", job)},
            "spec": {
                "selector": {"matchLabels": selector},
                "endpoints": [{"port": port, "path": "/metrics", "interval": SCRAPE_INTERVAL}],
            },
        }

    return [
        monitoring(VLLM_JOB, {SERVING_LABEL: "vllm"}, "http"),
        monitoring(EPP_JOB, {"app.kubernetes.io/name": "epp"}, "metrics"),
        monitoring(BBR_JOB, {"app.kubernetes.io/name": "bbr"}, "metrics"),
    ]


def alertmanager_config(cfg: PlatformConfig, webhook_url: str | None) -> str | None:
    """The managed Alertmanager's ``alertmanager.yaml`` for the stack's receivers (None: no receiver)."""
    email = cfg.monitoring.email
    receiver: dict[str, Any] = {"name": "llm-gateway"}
    if webhook_url is not None:
        receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
    if email is not None:
        receiver["email_configs"] = [
            {"to": address, "from": email.from_address, "smarthost": email.smarthost, "send_resolved": True}
            for address in email.to
        ]
    if len(receiver) == 1:
        return None
    route = {"receiver": "llm-gateway", "group_by": ["alertname", "model"]}
    document = {"route": route, "receivers": [receiver]}
    return yaml.safe_dump(document, sort_keys=False)


def dashboard_url(project: str, dashboard_id: str) -> str:
    """The Cloud Console link of a dashboard (its id is ``projects/N/dashboards/ID``)."""
    console = "https://console.cloud.google.com/monitoring/dashboards/builder"
    return f"{console}/{dashboard_id.rsplit('/', 1)[-1]}?project={project}"


@dataclass(frozen=True)
class MonitoringArgs:
    config: PlatformConfig
    namespace_ref: pulumi.Input[str]
    provider: k8s.Provider
    after: pulumi.Resource
    """The cluster (GKE installs GMP's CRDs with it)."""
    webhook_url: pulumi.Output[str] | None = None


class Monitoring(pulumi.ComponentResource):
    """Collection, dashboard and alerts of one stack."""

    dashboard_url: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:Monitoring", name, None, opts)
        cfg = args.config
        settings = monitoring_settings(cfg)
        kube = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[args.after])
        for document in pod_monitorings(cfg.namespace):
            k8s.apiextensions.CustomResource(
                document["metadata"]["name"],
                api_version=document["apiVersion"],
                kind=document["kind"],
                metadata={**document["metadata"], "namespace": args.namespace_ref},
                spec=document["spec"],
                opts=kube,
            )
        rules = gmp_rules(settings, name="llm-gateway-alerts", namespace=cfg.namespace,
                          labels=labels("rules", "llm-gateway-alerts"))
        k8s.apiextensions.CustomResource(
            "llm-gateway-alerts",
            api_version=rules["apiVersion"],
            kind=rules["kind"],
            metadata={**rules["metadata"], "namespace": args.namespace_ref},
            spec=rules["spec"],
            opts=kube,
        )
        if cfg.monitoring.email is not None or args.webhook_url is not None:
            webhook: pulumi.Output[str] = (
                args.webhook_url if args.webhook_url is not None else pulumi.Output.from_input("")
            )
            text = as_secret(webhook.apply(lambda url: alertmanager_config(cfg, url or None) or ""))
            k8s.core.v1.Secret(
                "alertmanager-config",
                metadata={"name": ALERTMANAGER_SECRET, "namespace": GMP_PUBLIC,
                          "labels": labels("alertmanager", "llm-gateway")},
                type="Opaque",
                string_data={"alertmanager.yaml": text},
                opts=kube,
            )
        board = gcp.monitoring.Dashboard(
            "dashboard",
            project=cfg.project,
            dashboard_json=json.dumps(dashboard(settings, f"LLM gateway ({cfg.cluster_name})")),
            opts=pulumi.ResourceOptions(parent=self),
        )
        project = cfg.project
        self.dashboard_url = board.id.apply(lambda dashboard_id: dashboard_url(project, dashboard_id))
        self.register_outputs({"dashboardUrl": self.dashboard_url})
