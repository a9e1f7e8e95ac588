import pytest

from tests.epp.scheduling.builders import endpoint, plugin, request


def test_fewer_requests_in_flight_score_higher():
    pods = [endpoint("idle", in_flight=0), endpoint("busiest", in_flight=4), endpoint("some", in_flight=1)]
    assert plugin("active-request-scorer").score({}, request(), pods) == [1.0, 0.0, pytest.approx(0.75)]


def test_all_idle_endpoints_score_one():
    pods = [endpoint("a"), endpoint("b")]
    assert plugin("active-request-scorer").score({}, request(), pods) == [1.0, 1.0]
