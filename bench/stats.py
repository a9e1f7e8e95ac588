"""Summary arithmetic: percentiles, per-model and overall figures, ratios against a baseline.

Pure functions over ``RunResult``; no I/O. Latency distributions use successful requests only
(a fast 404 is not a fast answer); accuracy and success rates use every request.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from bench.client import RequestResult, RunResult


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks; None if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def sample_totals(page: str, split_by: Mapping[str, str] | None = None) -> dict[str, float]:
    """Each sample of a ``/metrics`` page summed over its labels, by sample name (a histogram's
    ``_sum`` and ``_count`` apart); a sample named in ``split_by`` is summed per value of that label
    instead, as ``name:value``."""
    split_by = split_by or {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            key = sample.name
            if key in split_by:
                key = f"{key}:{sample.labels.get(split_by[key], '')}"
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


class Distribution(BaseModel):
    """Seconds."""

    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        return cls(
            count=len(values),
            mean=sum(values) / len(values) if values else None,
            p50=percentile(values, 50),
            p95=percentile(values, 95),
            p99=percentile(values, 99),
        )


class Summary(BaseModel):
    """Figures for one model (or all of them) in one run."""

    requests: int
    successes: int
    success_rate: float
    correct: int
    accuracy: float  # the final answer came from the requested model
    first_attempt_accuracy: float
    misrouted: int  # first attempt answered 404 or by another model
    attempts: int
    attempts_per_request: float
    retried_requests: int
    requests_per_s: float  # successful requests per second of the whole run
    output_tokens: int
    output_tokens_per_s: float
    ttft: Distribution
    itl: Distribution
    e2e: Distribution
    # Of the answered requests' prompt tokens, the fraction the pods reported cached
    # (usage.prompt_tokens_details.cached_tokens); None when no server reported prompt tokens.
    cached_prompt_fraction: float | None = None
    pods: dict[str, int]  # x-inference-pod of final answers -> count
    statuses: dict[str, int]  # final outcome ("200", "404", "200+error", "no answer") -> count


class RunSummary(BaseModel):
    label: str
    url: str
    started_at: str
    duration_s: float
    stream: bool
    overall: Summary
    per_model: dict[str, Summary]


def summarize_results(results: Sequence[RequestResult], duration: float) -> Summary:
    """Figures of ``results``, with rates over ``duration`` seconds."""
    if duration <= 0:
        raise ValueError(f"duration must be > 0 s, got {duration}")
    n = len(results)
    ok = [r for r in results if r.ok]
    attempts = sum(len(r.attempts) for r in results)
    tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    return Summary(
        requests=n,
        successes=len(ok),
        success_rate=len(ok) / n if n else 0.0,
        correct=sum(r.correct for r in results),
        accuracy=sum(r.correct for r in results) / n if n else 0.0,
        first_attempt_accuracy=sum(r.first_attempt_correct for r in results) / n if n else 0.0,
        misrouted=sum(r.misrouted for r in results),
        attempts=attempts,
        attempts_per_request=attempts / n if n else 0.0,
        retried_requests=sum(len(r.attempts) > 1 for r in results),
        requests_per_s=len(ok) / duration,
        output_tokens=tokens,
        output_tokens_per_s=tokens / duration,
        ttft=Distribution.of([r.ttft for r in ok if r.ttft is not None]),
        itl=Distribution.of([gap for r in ok for gap in r.itl]),
        e2e=Distribution.of([r.e2e for r in ok if r.e2e is not None]),
        cached_prompt_fraction=sum(r.cached_tokens for r in ok) / prompt_tokens if prompt_tokens else None,
        pods=dict(sorted(Counter(r.final.pod for r in results if r.final.pod).items())),
        statuses=dict(sorted(Counter(r.final.outcome for r in results).items())),
    )


def summarize(run: RunResult) -> RunSummary:
    """Overall and per-model figures of one run (models in first-seen order)."""
    by_model: dict[str, list[RequestResult]] = {}
    for r in run.results:
        by_model.setdefault(r.requested_model, []).append(r)
    duration = max(run.duration, 1e-9)
    return RunSummary(
        label=run.label,
        url=run.url,
        started_at=run.started_at,
        duration_s=run.duration,
        stream=run.stream,
        overall=summarize_results(run.results, duration),
        per_model={model: summarize_results(rs, duration) for model, rs in by_model.items()},
    )


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``; None when either is unknown or the baseline is zero."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


class Comparison(BaseModel):
    """Target divided by baseline, per figure; None where undefined (e.g. a zero baseline)."""

    target: str
    baseline: str
    accuracy: float | None
    success_rate: float | None
    attempts_per_request: float | None
    requests_per_s: float | None
    e2e_p50: float | None
    e2e_p95: float | None
    ttft_p50: float | None
    misrouted_target: int  # requests whose first attempt reached a server without the model
    misrouted_baseline: int


def compare(target: Summary, baseline: Summary, target_label: str, baseline_label: str) -> Comparison:
    return Comparison(
        target=target_label,
        baseline=baseline_label,
        accuracy=ratio(target.accuracy, baseline.accuracy),
        success_rate=ratio(target.success_rate, baseline.success_rate),
        attempts_per_request=ratio(target.attempts_per_request, baseline.attempts_per_request),
        requests_per_s=ratio(target.requests_per_s, baseline.requests_per_s),
        e2e_p50=ratio(target.e2e.p50, baseline.e2e.p50),
        e2e_p95=ratio(target.e2e.p95, baseline.e2e.p95),
        ttft_p50=ratio(target.ttft.p50, baseline.ttft.p50),
        misrouted_target=target.misrouted,
        misrouted_baseline=baseline.misrouted,
    )
