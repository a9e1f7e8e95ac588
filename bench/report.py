"""Presenting results: the console table, the JSON report and the self-contained HTML report.

The HTML report embeds its matplotlib plots as base64 PNGs (Agg backend, no display needed), so
the single file can be attached to an issue or opened offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend is chosen first

from bench.client import RunResult
from bench.stats import Comparison, RunSummary, Summary, summarize


@dataclass
class Report:
    """One or more runs (e.g. the gateway and its baseline) and the comparisons between them."""

    title: str
    settings: dict[str, Any]
    runs: list[RunResult]
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # More plots for the HTML report, as base64 PNGs (the demo's, drawn from Prometheus).
    plots: list[str] = field(default_factory=list)

    def summaries(self) -> list[RunSummary]:
        return [summarize(run) for run in self.runs]


def _ms(seconds: float | None, decimals: int = 0) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.{decimals}f}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


COLUMNS = (
    "run",
    "model",
    "reqs",
    "success",
    "accuracy",
    "misrouted",
    "attempts/req",
    "req/s",
    "out tok/s",
    "TTFT p50/p95/p99 ms",
    "ITL p50 ms",
    "E2E p50/p95/p99 ms",
)


def _row(label: str, model: str, s: Summary) -> list[str]:
    return [
        label,
        model,
        str(s.requests),
        _pct(s.success_rate),
        _pct(s.accuracy),
        str(s.misrouted),
        f"{s.attempts_per_request:.2f}",
        f"{s.requests_per_s:.1f}",
        f"{s.output_tokens_per_s:.0f}",
        f"{_ms(s.ttft.p50)}/{_ms(s.ttft.p95)}/{_ms(s.ttft.p99)}",
        _ms(s.itl.p50, 1),
        f"{_ms(s.e2e.p50)}/{_ms(s.e2e.p95)}/{_ms(s.e2e.p99)}",
    ]


def table_rows(summaries: list[RunSummary]) -> list[list[str]]:
    rows = []
    for summary in summaries:
        for model, s in summary.per_model.items():
            rows.append(_row(summary.label, model, s))
        if len(summary.per_model) > 1:
            rows.append(_row(summary.label, "(all)", summary.overall))
    return rows


def format_table(summaries: list[RunSummary]) -> str:
    """A fixed-width text table: one row per run and model, plus an "(all)" row for mixed runs."""
    rows = [list(COLUMNS), *table_rows(summaries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_pods(summaries: list[RunSummary]) -> str:
    """Which pods answered each run (``x-inference-pod``), e.g. how a scaled-out pool was spread."""
    lines = []
    for summary in summaries:
        spread = ", ".join(f"{pod} {count}" for pod, count in summary.overall.pods.items()) or "none"
        lines.append(f"{summary.label}: answered by {spread}")
    return "\n".join(lines)


def format_comparison(c: Comparison) -> str:
    return (
        f"{c.target} vs {c.baseline}: accuracy {_x(c.accuracy)}, success {_x(c.success_rate)}, "
        f"attempts/request {_x(c.attempts_per_request)}, E2E p50 {_x(c.e2e_p50)}, E2E p95 {_x(c.e2e_p95)}, "
        f"misrouted {c.misrouted_target} vs {c.misrouted_baseline}"
    )


def to_dict(report: Report) -> dict[str, Any]:
    """The JSON report: settings, summaries, comparisons and every request's outcome."""
    return {
        "title": report.title,
        "settings": report.settings,
        "notes": report.notes,
        "runs": [s.model_dump(mode="json") for s in report.summaries()],
        "comparisons": [c.model_dump(mode="json") for c in report.comparisons],
        "requests": {
            run.label: [
                {
                    "index": r.index,
                    "model": r.requested_model,
                    "start_s": round(r.start, 6),
                    "attempts": [
                        {"status": a.status, "model": a.model, "pod": a.pod, "error": a.error}
                        for a in r.attempts
                    ],
                    "e2e_s": r.e2e,
                    "ttft_s": r.ttft,
                    "output_tokens": r.output_tokens,
                }
                for r in run.results
            ]
            for run in report.runs
        },
    }


def write_json(report: Report, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(report), indent=2) + "\n")
    return path


def png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def cdf_plot(report: Report, attr: str, title: str) -> str | None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    drawn = False
    for run in report.runs:
        by_model: dict[str, list[float]] = {}
        for r in run.results:
            value = getattr(r, attr)
            if r.ok and value is not None:
                by_model.setdefault(r.requested_model, []).append(value * 1000)
        for model, values in by_model.items():
            values.sort()
            ax.step(
                values,
                [(i + 1) / len(values) for i in range(len(values))],
                where="post",
                label=f"{run.label} · {model}",
            )
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return png(fig)


def _accuracy_plot(summaries: list[RunSummary]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [s.label for s in summaries]
    xs = range(len(summaries))
    ax.bar([x - 0.2 for x in xs], [s.overall.accuracy * 100 for s in summaries], width=0.4, label="accuracy")
    ax.bar(
        [x + 0.2 for x in xs], [s.overall.success_rate * 100 for s in summaries], width=0.4, label="success"
    )
    ax.set_xticks(list(xs), labels, rotation=15, fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of requests")
    ax.set_title("Routing accuracy and success rate per run")
    ax.legend(fontsize=8)
    return png(fig)


def _timeline_plot(report: Report) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for run in report.runs:
        good = [(r.start, (r.e2e or 0) * 1000) for r in run.results if r.correct]
        bad = [(r.start, (r.e2e or 0) * 1000) for r in run.results if not r.correct]
        if good:
            ax.scatter([x for x, _ in good], [y for _, y in good], s=6, label=f"{run.label} · right model")
        if bad:
            ax.scatter(
                [x for x, _ in bad],
                [y for _, y in bad],
                s=14,
                marker="x",
                label=f"{run.label} · wrong model/failed",
            )
    ax.set_xlabel("s since the run's start")
    ax.set_ylabel("E2E ms")
    ax.set_title("Every request over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return png(fig)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3} td:nth-child(-n+2){text-align:left}
img{display:block;margin:1em 0} code{background:#f3f3f3;padding:1px 4px}
"""


def render_html(report: Report) -> str:
    summaries = report.summaries()
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in table_rows(summaries)
    )
    plots = [
        _accuracy_plot(summaries),
        cdf_plot(report, "e2e", "End-to-end latency (successful requests)"),
        cdf_plot(report, "ttft", "Time to first token (streaming)"),
        _timeline_plot(report),
        *report.plots,
    ]
    images = "".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in plots if p)
    comparisons = "".join(f"<li>{esc(format_comparison(c))}</li>" for c in report.comparisons)
    notes = "".join(f"<li>{esc(n)}</li>" for n in report.notes)
    settings = esc(json.dumps(report.settings, indent=2))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(report.title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{esc(report.title)}</h1>"
        + (f"<ul>{notes}</ul>" if notes else "")
        + f"<h2>Summary</h2><table><tr>{head}</tr>{body}</table>"
        + (f"<h2>Against the baseline</h2><ul>{comparisons}</ul>" if comparisons else "")
        + f"<h2>Plots</h2>{images}<h2>Settings</h2><pre>{settings}</pre></body></html>\n"
    )


def write_html(report: Report, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report))
    return path
