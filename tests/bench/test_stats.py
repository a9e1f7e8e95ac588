"""The benchmark's arithmetic on inputs whose answers are known by hand."""

from __future__ import annotations

import pytest

from bench.client import Attempt, RequestResult, RunResult
from bench.stats import Distribution, compare, percentile, ratio, summarize, summarize_results

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"


def result(model: str, *attempts: Attempt, e2e: float = 0.1, tokens: int = 10) -> RequestResult:
    return RequestResult(0, model, start=0.0, attempts=list(attempts), e2e=e2e, output_tokens=tokens)


def test_percentiles_interpolate_between_ranks_like_numpy_linear() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile(values, 100) == 10.0
    assert percentile([7.0], 99) == 7.0
    assert percentile(list(reversed(values)), 50) == pytest.approx(5.5)


def test_percentile_of_nothing_is_unknown_and_out_of_range_is_an_error() -> None:
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)
    empty = Distribution.of([])
    assert (empty.count, empty.mean, empty.p99) == (0, None, None)


def test_accuracy_counts_only_answers_from_the_requested_model() -> None:
    results = [
        result(GEMMA, Attempt(200, GEMMA, "gemma-0")),
        result(GEMMA, Attempt(200, PHI, "phi-0")),  # answered, but by the wrong model
        result(GEMMA, Attempt(404, None, "phi-0")),  # the pod does not serve gemma
        result(GEMMA, Attempt(None, error="ConnectError")),
    ]
    s = summarize_results(results, duration=2.0)
    assert s.requests == 4
    assert s.successes == 2
    assert s.success_rate == 0.5
    assert s.correct == 1
    assert s.accuracy == 0.25
    assert s.misrouted == 2
    assert s.requests_per_s == 1.0  # two successes over two seconds
    assert s.output_tokens == 20
    assert s.statuses == {"200": 2, "404": 1, "no answer": 1}
    assert s.pods == {"gemma-0": 1, "phi-0": 2}


def test_retried_requests_count_every_attempt_and_their_first_try_accuracy() -> None:
    results = [
        result(PHI, Attempt(404, None, "gemma-0"), Attempt(200, PHI, "phi-0")),
        result(PHI, Attempt(404, None, "gemma-0"), Attempt(404, None, "gemma-0"), Attempt(200, PHI, "phi-0")),
        result(PHI, Attempt(200, PHI, "phi-0")),
        result(PHI, Attempt(200, PHI, "phi-0")),
    ]
    s = summarize_results(results, duration=1.0)
    assert s.attempts == 7
    assert s.attempts_per_request == 1.75
    assert s.retried_requests == 2
    assert s.accuracy == 1.0
    assert s.first_attempt_accuracy == 0.5
    assert s.misrouted == 2


def test_latency_percentiles_ignore_failed_requests() -> None:
    results = [
        result(GEMMA, Attempt(200, GEMMA), e2e=1.0),
        result(GEMMA, Attempt(200, GEMMA), e2e=3.0),
        result(GEMMA, Attempt(503, None), e2e=0.001),
    ]
    s = summarize_results(results, duration=1.0)
    assert s.e2e.count == 2
    assert s.e2e.p50 == pytest.approx(2.0)
    assert s.e2e.mean == pytest.approx(2.0)


def test_a_run_is_summarized_per_model_and_overall() -> None:
    run = RunResult(
        "gateway",
        "http://x",
        "t",
        4.0,
        False,
        [result(GEMMA, Attempt(200, GEMMA)), result(PHI, Attempt(200, PHI)), result(PHI, Attempt(404))],
    )
    summary = summarize(run)
    assert list(summary.per_model) == [GEMMA, PHI]
    assert summary.per_model[PHI].accuracy == 0.5
    assert summary.overall.requests == 3
    assert summary.overall.requests_per_s == 0.5


def test_ratios_against_a_baseline_are_undefined_when_the_baseline_is_zero() -> None:
    assert ratio(1.0, 0.5) == 2.0
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 1.0) is None
    good = summarize_results([result(GEMMA, Attempt(200, GEMMA), e2e=0.2)] * 4, 1.0)
    bad = summarize_results(
        [result(GEMMA, Attempt(200, GEMMA), e2e=0.1)] * 2 + [result(GEMMA, Attempt(404))] * 2, 1.0
    )
    c = compare(good, bad, "gateway", "round-robin")
    assert c.accuracy == 2.0
    assert c.success_rate == 2.0
    assert c.attempts_per_request == 1.0
    assert c.e2e_p50 == pytest.approx(2.0)
    assert (c.misrouted_target, c.misrouted_baseline) == (0, 2)


def test_a_summary_needs_a_positive_duration() -> None:
    with pytest.raises(ValueError, match="duration"):
        summarize_results([], 0.0)
