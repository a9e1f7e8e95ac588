from epp.scheduling import SaturationDetector, load_profile, parse_config

from tests.epp.scheduling.builders import endpoint

NOW = 100.0


def test_a_pool_with_one_endpoint_under_every_threshold_is_not_saturated():
    detector = SaturationDetector()
    pods = [endpoint("busy", waiting=50), endpoint("fine", waiting=5, kv=0.8, updated_at=NOW - 0.1)]
    assert not detector.saturated(pods, now=NOW)


def test_a_pool_where_every_endpoint_is_over_the_queue_or_kv_threshold_is_saturated():
    detector = SaturationDetector()
    pods = [endpoint("queued", waiting=6, updated_at=NOW), endpoint("kv-full", kv=0.81, updated_at=NOW)]
    assert detector.saturated(pods, now=NOW)


def test_stale_or_never_scraped_metrics_count_as_saturated():
    detector = SaturationDetector()
    assert detector.saturated([endpoint("stale", updated_at=NOW - 0.21)], now=NOW)
    assert detector.saturated([endpoint("never", updated_at=0.0)], now=NOW)


def test_no_candidates_means_saturated():
    assert SaturationDetector().saturated([], now=NOW)


def test_thresholds_come_from_the_config_and_default_like_upstream():
    defaults = SaturationDetector.from_config(load_profile("default"))
    assert (defaults.queue_depth_threshold, defaults.kv_cache_util_threshold) == (5, 0.8)
    assert defaults.metrics_staleness_threshold == 0.2

    config = parse_config(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: d}]\n"
        "saturationDetector: {queueDepthThreshold: 0, metricsStalenessThreshold: 2s}\n"
    )
    strict = SaturationDetector.from_config(config)
    assert strict.saturated([endpoint("one-waiting", waiting=1, updated_at=NOW - 1.5)], now=NOW)
    assert not strict.saturated([endpoint("empty", waiting=0, updated_at=NOW - 1.5)], now=NOW)
