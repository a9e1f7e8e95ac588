"""Renderings of ``monitoring.definitions``: Prometheus rule groups (a local rule file, or the spec of
GMP ``Rules``), a Cloud Monitoring dashboard (PromQL widgets) and the one box's Prometheus config.

The PromQL is never rewritten on the way: the dashboard's queries are the panels' queries, and the
rule file's expressions are the GMP Rules' expressions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monitoring.definitions import RULE_GROUP, RUNBOOK, Panel, Settings, alerts, panels

GMP_API_VERSION = "monitoring.googleapis.com/v1"

_COLUMNS = 48
_TILE_WIDTH = 24
_TILE_HEIGHT = 16


def rule_groups(settings: Settings, interval: str = "30s") -> list[dict[str, Any]]:
    """The alerting rules as Prometheus rule groups (the same shape for a file and for GMP Rules)."""
    rules: list[dict[str, Any]] = []
    for alert in alerts(settings):
        rule: dict[str, Any] = {
            "alert": alert.name,
            "expr": alert.expr,
            "labels": {"severity": alert.severity, **alert.labels},
            "annotations": {"summary": alert.summary, "runbook": f"{RUNBOOK}#{alert.name.lower()}"},
        }
        if alert.for_ not in ("0", "0s"):
            rule["for"] = alert.for_
        rules.append(rule)
    return [{"name": RULE_GROUP, "interval": interval, "rules": rules}]


def prometheus_rule_file(settings: Settings, interval: str = "30s") -> dict[str, Any]:
    """A rule file for ``prometheus --config.file`` / ``promtool test rules``."""
    return {"groups": rule_groups(settings, interval)}


def gmp_rules(settings: Settings, *, name: str, namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """A GMP ``Rules`` object (namespaced: its queries see that namespace's metrics)."""
    return {
        "apiVersion": GMP_API_VERSION,
        "kind": "Rules",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"groups": rule_groups(settings, "30s")},
    }


def _tile(index: int, panel: Panel) -> dict[str, Any]:
    data_sets: list[dict[str, Any]] = []
    for query in panel.queries:
        series: dict[str, Any] = {"prometheusQuery": query.expr}
        if panel.unit:
            series["unitOverride"] = panel.unit
        data_sets.append({"timeSeriesQuery": series, "plotType": "LINE", "targetAxis": "Y1"})
    per_row = _COLUMNS // _TILE_WIDTH
    return {
        "xPos": (index % per_row) * _TILE_WIDTH,
        "yPos": (index // per_row) * _TILE_HEIGHT,
        "width": _TILE_WIDTH,
        "height": _TILE_HEIGHT,
        "widget": {
            "title": panel.title,
            "xyChart": {"dataSets": data_sets, "yAxis": {"scale": "LINEAR"}},
        },
    }


def dashboard(settings: Settings, title: str) -> dict[str, Any]:
    """A Cloud Monitoring dashboard (``gcp.monitoring.Dashboard``'s ``dashboard_json``)."""
    return {
        "displayName": title,
        "mosaicLayout": {"columns": _COLUMNS, "tiles": [_tile(i, p) for i, p in enumerate(panels(settings))]},
    }


def dashboard_queries(document: Mapping[str, Any]) -> list[str]:
    """Every PromQL query of a rendered dashboard, in panel order."""
    return [
        data_set["timeSeriesQuery"]["prometheusQuery"]
        for tile in document["mosaicLayout"]["tiles"]
        for data_set in tile["widget"]["xyChart"]["dataSets"]
    ]


def prometheus_config(
    targets: Mapping[str, Sequence[tuple[str, str]]],
    rule_files: Sequence[str],
    *,
    scrape_interval: str = "2s",
    evaluation_interval: str = "2s",
) -> dict[str, Any]:
    """A Prometheus config scraping ``targets`` (job -> (host:port, pod name)) and evaluating
    ``rule_files``; each target gets the ``pod`` label GMP would give it."""
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": list(rule_files),
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [
                    {"targets": [address], "labels": {"pod": pod}} for address, pod in members
                ],
            }
            for job, members in targets.items()
        ],
    }
