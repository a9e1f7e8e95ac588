"""Plots drawn from the one box's Prometheus over a run (``make demo``): the dashboard's own queries
(``monitoring.definitions``) as range queries, one PNG per panel, for the HTML report."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import matplotlib.pyplot as plt

from bench.report import png
from monitoring.definitions import Panel, Settings, panels
from onebox.prometheus import query_range

# Per-pod load, TTFT and queue: what a reader would look at first.
DEMO_PANELS = ("Running requests by pod", "TTFT (vLLM)", "Queued requests by pod")


def demo_panels(settings: Settings, titles: Sequence[str] = DEMO_PANELS) -> list[Panel]:
    by_title = {panel.title: panel for panel in panels(settings)}
    return [by_title[title] for title in titles]


def _legend(template: str, labels: dict[str, str]) -> str:
    text = template
    for name, value in labels.items():
        text = text.replace("{{" + name + "}}", value)
    return text


async def draw(url: str, panel: Panel, start: float, end: float, step: float = 1.0) -> str | None:
    """One panel's queries over ``start``..``end`` as a PNG (base64); None when nothing came back."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    drawn = False
    async with httpx.AsyncClient(timeout=10.0) as client:
        for query in panel.queries:
            for series in await query_range(client, url, query.expr, start, end, step):
                values = series["values"]
                points = [(float(t) - start, float(v)) for t, v in values if v not in ("NaN", "+Inf")]
                if not points:
                    continue
                label = _legend(query.legend, series["metric"])
                ax.plot([t for t, _ in points], [v for _, v in points], label=label)
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("s since the box was up")
    ax.set_ylabel(panel.unit or "count")
    ax.set_title(f"{panel.title} (from Prometheus)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return png(fig)


async def draw_all(url: str, settings: Settings, start: float, end: float) -> list[str]:
    plots = [await draw(url, panel, start, end) for panel in demo_panels(settings)]
    return [p for p in plots if p is not None]
