"""The cache-flush row's figures (``bench.flush``), from what the client and the counters saw."""

from __future__ import annotations

from bench.client import Attempt, RequestResult
from bench.flush import FlushResult, Phase, format_flush, to_dict
from bench.stats import summarize_results

GEMMA = "google/gemma-2b-it"


def phase(answers: list[Attempt], hits: float, queries: float, cpu: float) -> Phase:
    results = [RequestResult(i, GEMMA, start=0.0, attempts=[a], e2e=0.5) for i, a in enumerate(answers)]
    feedback = {"stale entries": 3.0, "cpu s": cpu, "confirmed": 2.0, "stale": 1.0, "unreported": 0.0}
    return Phase(summarize_results(results, 1.0), None, hits, queries, feedback)


def test_the_row_reports_each_runs_hit_rate_and_cpu_and_passes_only_with_every_answer_right() -> None:
    right = [Attempt(200, GEMMA, "gemma-0")] * 4
    learning = phase(right, hits=900, queries=1000, cpu=0.008)
    assert learning.hit_rate == 0.9
    assert learning.epp_cpu_ms_per_request == 2.0
    result = FlushResult("cache-flush (default)", learning, phase(right, 800, 1000, 0.004), 1.5)
    assert result.passed
    text = format_flush([result])
    assert "hit rate  90.0%" in text
    assert "hit rate  80.0%" in text
    assert "EPP CPU 2.00 ms/request; stale entries 3, confirmed 2, stale 1, unreported 0" in text
    assert to_dict([result])[0]["learning"]["hit_rate"] == 0.9  # type: ignore[index]
    # An answer from another model fails the row.
    wrong = [*right[:3], Attempt(200, "microsoft/Phi-3-mini-4k-instruct", "gemma-1")]
    assert not FlushResult("cache-flush (default)", learning, phase(wrong, 800, 1000, 0.004), 1.5).passed
    assert phase(right, 0, 0, 0).hit_rate is None
