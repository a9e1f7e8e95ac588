from collections import Counter

import pytest

from tests.epp.scheduling.builders import endpoint, plugin


def test_picks_in_proportion_to_score():
    pods = [endpoint("light"), endpoint("heavy")]
    picker = plugin("weighted-random-picker", seed=11)
    counts = Counter(picker.pick(pods, [1.0, 3.0])[0].name for _ in range(4000))
    assert counts["heavy"] / 4000 == pytest.approx(0.75, abs=0.03)


def test_zero_score_is_never_picked_while_another_scores_above_zero():
    pods = [endpoint("zero"), endpoint("some")]
    picker = plugin("weighted-random-picker", seed=2)
    assert {picker.pick(pods, [0.0, 0.1])[0].name for _ in range(500)} == {"some"}


def test_all_zero_scores_pick_uniformly():
    pods = [endpoint("a"), endpoint("b")]
    picker = plugin("weighted-random-picker", seed=4)
    assert {picker.pick(pods, [0.0, 0.0])[0].name for _ in range(100)} == {"a", "b"}


def test_ranked_sample_puts_zero_scores_last():
    pods = [endpoint("zero"), endpoint("a"), endpoint("b")]
    picker = plugin("weighted-random-picker", {"maxNumOfEndpoints": 3}, seed=9)
    for _ in range(50):
        picks = picker.pick(pods, [0.0, 1.0, 2.0])
        assert sorted(e.name for e in picks[:2]) == ["a", "b"]
        assert picks[2].name == "zero"
