import pytest

from tests.epp.scheduling.builders import endpoint, plugin, request


def test_emptier_kv_cache_scores_higher():
    pods = [endpoint("empty", kv=0.0), endpoint("quarter", kv=0.25), endpoint("full", kv=1.0)]
    assert plugin("kv-cache-utilization-scorer").score({}, request(), pods) == [1.0, pytest.approx(0.75), 0.0]
