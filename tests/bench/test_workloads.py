"""Workloads are decided by their seed, so a baseline replays exactly the same requests."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bench.workloads import Workload, WorkloadConfig, bursty_arrivals, generate, poisson_arrivals

MODELS = ["google/gemma-2b-it", "microsoft/Phi-3-mini-4k-instruct"]


def test_the_same_seed_generates_the_same_requests_and_another_seed_does_not() -> None:
    config = WorkloadConfig(models=MODELS, requests=50, seed=7)
    assert generate(config) == generate(config.model_copy())
    assert generate(config) != generate(config.model_copy(update={"seed": 8}))


def test_random_mixed_traffic_asks_for_every_model() -> None:
    specs = generate(WorkloadConfig(models=MODELS, requests=50, max_tokens=16))
    assert len(specs) == 50
    assert [s.index for s in specs] == list(range(50))
    assert {s.model for s in specs} == set(MODELS)
    assert all(s.max_tokens == 16 for s in specs)
    body = specs[0].body(stream=True)
    assert body["model"] == specs[0].model
    assert body["stream_options"] == {"include_usage": True}
    assert "stream_options" not in specs[0].body(stream=False)


def test_shared_prefix_prompts_of_a_group_share_one_system_prompt_and_one_model() -> None:
    config = WorkloadConfig(
        workload=Workload.SHARED_PREFIX,
        models=MODELS,
        requests=24,
        groups=3,
        prompts_per_group=8,
        system_prompt_len=100,
        question_len=10,
        output_len=5,
    )
    specs = generate(config)
    assert len(specs) == 24
    by_group: dict[int | None, set[tuple[str, str]]] = {}
    for s in specs:
        by_group.setdefault(s.group, set()).add((s.model, s.messages[0][1]))
    assert sorted(g for g in by_group if g is not None) == [0, 1, 2]
    assert all(len(v) == 1 for v in by_group.values())
    assert all(s.max_tokens == 5 for s in specs)
    system = specs[0].messages[0][1]
    assert 350 <= len(system) <= 450  # ~4 characters per token


def test_long_prompts_have_the_requested_length() -> None:
    specs = generate(
        WorkloadConfig(workload=Workload.LONG_PROMPT, models=MODELS, requests=3, prompt_len=1000)
    )
    assert all(3900 <= s.prompt_chars <= 4000 for s in specs)


def test_bad_workload_settings_are_named() -> None:
    with pytest.raises(ValidationError, match="distinct"):
        WorkloadConfig(models=["a", "a"], requests=1)
    with pytest.raises(ValidationError, match="requests"):
        WorkloadConfig(models=["a"], requests=0)


def test_poisson_arrivals_are_seeded_and_average_the_rate() -> None:
    arrivals = poisson_arrivals(rate=20.0, count=2000, seed=1)
    assert arrivals == poisson_arrivals(rate=20.0, count=2000, seed=1)
    assert arrivals[0] == 0.0
    assert arrivals == sorted(arrivals)
    assert 2000 / arrivals[-1] == pytest.approx(20.0, rel=0.1)
    with pytest.raises(ValueError, match="rate"):
        poisson_arrivals(0.0, 1, 0)


def test_a_prefix_salt_changes_every_system_prompt_and_nothing_else() -> None:
    config = WorkloadConfig(workload=Workload.SHARED_PREFIX, models=["m"], requests=12, groups=3)
    plain, salted = generate(config), generate(config.model_copy(update={"prefix_salt": "rr "}))
    assert [s.messages[1] for s in plain] == [s.messages[1] for s in salted]
    assert all(b.messages[0][1] == "rr " + a.messages[0][1] for a, b in zip(plain, salted, strict=True))


@pytest.mark.parametrize("workload", [Workload.RANDOM_MIXED, Workload.LONG_PROMPT])
def test_every_workload_salts_its_prompts_so_a_second_run_finds_nothing_cached(workload: Workload) -> None:
    # The matrix runs the gateway, then round robin, on the same pods: unsalted, the second run would
    # find the first run's prompts in the pods' prefix caches (and answer faster for it).
    config = WorkloadConfig(workload=workload, models=["a", "b"], requests=8, prompt_len=40)
    plain, salted = generate(config), generate(config.model_copy(update={"prefix_salt": "rr "}))
    assert [(s.model, s.max_tokens) for s in plain] == [(s.model, s.max_tokens) for s in salted]
    assert all(b.messages[-1][1] == "rr " + a.messages[-1][1] for a, b in zip(plain, salted, strict=True))


def test_bursty_arrivals_come_faster_during_the_burst() -> None:
    offsets = bursty_arrivals(10, 100, burst_start=2.0, burst_seconds=1.0, count=400, seed=1)
    during = sum(2.0 <= t < 3.0 for t in offsets)
    before = sum(0.0 <= t < 1.0 for t in offsets)
    assert during > 3 * before
    assert offsets == sorted(offsets)
