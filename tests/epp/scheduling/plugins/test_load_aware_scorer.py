import pytest
from epp.scheduling import ConfigError

from tests.epp.scheduling.builders import endpoint, plugin, request


def test_empty_queue_scores_half_and_the_score_falls_to_zero_at_the_threshold():
    scorer = plugin("load-aware-scorer", {"threshold": 10})
    pods = [
        endpoint("empty"),
        endpoint("half", waiting=5),
        endpoint("at", waiting=10),
        endpoint("over", waiting=50),
    ]
    assert scorer.score({}, request(), pods) == [0.5, pytest.approx(0.25), 0.0, 0.0]


def test_default_threshold_is_128():
    assert plugin("load-aware-scorer").score({}, request(), [endpoint("a", waiting=64)]) == [
        pytest.approx(0.25)
    ]


@pytest.mark.parametrize("threshold", [0, -3, 2.5, "10", True])
def test_threshold_must_be_a_positive_integer(threshold):
    with pytest.raises(ConfigError) as caught:
        plugin("load-aware-scorer", {"threshold": threshold})
    assert str(caught.value) == (
        f"plugin 'load-aware-scorer': parameter 'threshold': must be a positive integer, got {threshold!r}"
    )
