"""The elastic rows of the matrix: figures and verdicts, and the fairness row's quick form end to end."""

from __future__ import annotations

import pytest

from bench import elastic, matrix


def test_a_figure_passes_only_within_its_target_and_one_without_a_target_is_no_verdict() -> None:
    assert elastic.Figure("ratio", 1.5, "x", 2.0).passed is True
    assert elastic.Figure("ratio", 2.5, "x", 2.0).passed is False
    assert elastic.Figure("ratio", None, "x", 2.0).passed is False
    assert elastic.Figure("replicas", 3.0, "", 2.0, at_most=False).passed is True
    assert elastic.Figure("FIFO", 20.0, "x").passed is None
    figures = [elastic.Figure("FIFO", 20.0, "x"), elastic.Figure("errors", 0.0, "", 0.0)]
    result = elastic.ElasticResult("r", "about", figures)
    assert result.passed
    assert "FAIL" in str(elastic.Figure("ratio", 2.5, "x", 2.0))


def test_the_matrix_knows_the_elastic_rows() -> None:
    assert elastic.ROWS == ("fairness", "cold-start", "load-step")
    assert "fairness" in matrix.build_parser().format_help()


def test_the_quick_forms_are_smaller() -> None:
    full, quick = elastic.FairnessSettings(), elastic.FairnessSettings.quick()
    assert quick.streams < full.streams
    assert quick.light_requests < full.light_requests
    assert full.streams >= 8 * 8  # several times the two pods' 4 slots each
    assert elastic.StepSettings.quick().after < elastic.StepSettings().after


@pytest.mark.envoy
@pytest.mark.slow
async def test_the_quick_fairness_row_measures_both_queues_and_the_light_tenant_never_fails() -> None:
    lines: list[str] = []
    result = await elastic.fairness(quick=True, out=lines.append)
    print("\n".join(lines))  # the figures, for whoever runs it: never asserted (a shared machine)
    assert [line.split(":")[0].strip() for line in lines] == ["flow control", "FIFO (no queue)"]
    errors = {f.what: f for f in result.figures}["light errors"]
    assert errors.value == 0
    assert {f.what for f in result.figures} == {
        "light TTFT p50 flooded/alone", "light errors", "FIFO light TTFT p50 flooded/alone",
        "heavy req/s with the queue / FIFO",
    }  # fmt: skip


def test_on_a_slower_model_the_light_tenant_keeps_its_pace_relative_to_the_model() -> None:
    quick = elastic.FairnessSettings.quick()
    slower = quick.scaled(3.0)
    assert (slower.light_every, slower.warmup) == (quick.light_every * 3, quick.warmup * 3)
    assert (slower.streams, slower.light_requests) == (quick.streams, quick.light_requests)
    assert quick.scaled(1.0) == quick
