import pytest
from epp.scheduling import ConfigError

from tests.epp.scheduling.builders import endpoint, plugin


def test_the_highest_score_wins():
    pods = [endpoint("a"), endpoint("b"), endpoint("c")]
    assert plugin("max-score-picker").pick(pods, [0.2, 3.5, 1.0]) == [pods[1]]


def test_ties_are_broken_at_random_among_the_best_only():
    pods = [endpoint("a"), endpoint("b"), endpoint("c"), endpoint("low")]
    picker = plugin("max-score-picker", seed=1)
    chosen = {picker.pick(pods, [2.0, 2.0, 2.0, 1.0])[0].name for _ in range(200)}
    assert chosen == {"a", "b", "c"}


def test_max_num_of_endpoints_ranks_best_first():
    pods = [endpoint("a"), endpoint("b"), endpoint("c")]
    picks = plugin("max-score-picker", {"maxNumOfEndpoints": 2}).pick(pods, [0.1, 0.9, 0.5])
    assert [e.name for e in picks] == ["b", "c"]


def test_max_num_of_endpoints_must_be_positive():
    with pytest.raises(ConfigError, match="parameter 'maxNumOfEndpoints': must be a positive integer, got 0"):
        plugin("max-score-picker", {"maxNumOfEndpoints": 0})
