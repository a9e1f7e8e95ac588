import random
import time

import pytest
from epp.scheduling import EndpointPickerConfig, Scheduler, load_profile, shipped_profiles
from epp.scheduling.errors import ConfigError
from epp.scheduling.plugins.scorers.prefix_affinity import PrefixAffinityScorer

from tests.epp.scheduling.builders import endpoint, request

NVLINK = {"llm-d.ai/kv-backend": "nvlink"}


def test_the_three_documented_profiles_ship_with_the_package():
    assert shipped_profiles() == ["default", "proxy-performance", "proxy-performance-by-backend"]


@pytest.mark.parametrize("name", ["default", "proxy-performance", "proxy-performance-by-backend"])
def test_each_shipped_profile_loads_and_schedules(name):
    config = load_profile(name)
    assert isinstance(config, EndpointPickerConfig)
    pods = [endpoint("a", labels=NVLINK), endpoint("b", labels=NVLINK, waiting=3, in_flight=2)]
    result = Scheduler.from_config(config, rng=random.Random(0)).schedule(request(prompt="p" * 200), pods)
    assert result.endpoint is pods[0]
    assert result.profile == "default"


def test_default_is_bounded_load_prefix_affinity_with_a_load_bound_of_1_5():
    profile = Scheduler.from_config(load_profile("default")).profiles["default"]
    assert [(s.type_name, w) for s, w in profile.scorers] == [("prefix-affinity-scorer", 1.0)]
    [(affinity, _)] = profile.scorers
    assert isinstance(affinity, PrefixAffinityScorer)
    assert (affinity.load_bound, affinity.block_size, affinity.home_blocks) == (2.0, 64, 16)
    assert profile.picker.type_name == "max-score-picker"


def test_default_sends_a_prefix_away_from_its_home_only_when_the_home_is_over_the_bound():
    pick = Scheduler.from_config(load_profile("default"), rng=random.Random(0))
    fresh = time.monotonic() + 60
    pods = [endpoint(f"gemma-{i}", updated_at=fresh) for i in range(4)]
    prompt = "group 4: " + "You answer questions about trains. " * 40
    home = pick.schedule(request(prompt=prompt), pods).endpoint
    assert home is not None
    for pod in pods:
        pod.metrics.running = 4
    # A waiting request counts twice (the scorer's waitingWeight).
    home.metrics.waiting = 4  # 4 + 2 x 4 = 12 against a mean of 6 (bound 2 x 6 + 1 = 13): keeps the prefix
    assert pick.schedule(request(prompt=prompt), pods).endpoint is home
    home.metrics.waiting = 6  # 16 against a mean of 7 (bound 15): loses it
    assert pick.schedule(request(prompt=prompt), pods).endpoint is not home


def test_proxy_performance_picks_the_endpoint_with_fewest_requests_in_flight():
    pick = Scheduler.from_config(load_profile("proxy-performance"))
    pods = [endpoint("busy", in_flight=5), endpoint("quiet", in_flight=1, waiting=50)]
    assert pick.schedule(request(), pods).endpoint is pods[1]


def test_proxy_performance_by_backend_only_picks_nvlink_endpoints():
    pick = Scheduler.from_config(load_profile("proxy-performance-by-backend"))
    plain = endpoint("plain", in_flight=0)
    nvlink = endpoint("nvlink", labels=NVLINK, in_flight=9)
    assert pick.schedule(request(), [plain, nvlink]).endpoint is nvlink
    assert pick.schedule(request(), [plain]).rejected_by == "nvlink-backend"


def test_an_unknown_profile_lists_the_shipped_ones():
    with pytest.raises(ConfigError) as caught:
        load_profile("fastest")
    assert str(caught.value) == (
        "unknown profile 'fastest' (available: default, proxy-performance, proxy-performance-by-backend)"
    )
