import pytest

from tests.epp.scheduling.builders import endpoint, plugin, request


def test_shortest_queue_scores_one_longest_zero_and_the_rest_in_between():
    pods = [endpoint("idle", waiting=2), endpoint("busy", waiting=10), endpoint("middling", waiting=6)]
    assert plugin("queue-scorer").score({}, request(), pods) == [1.0, 0.0, pytest.approx(0.5)]


def test_equal_queues_all_score_one():
    pods = [endpoint("a", waiting=3), endpoint("b", waiting=3)]
    assert plugin("queue-scorer").score({}, request(), pods) == [1.0, 1.0]
