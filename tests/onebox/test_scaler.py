"""The box's autoscaler: topology validation, signals read from EPP metrics, KEDA's decisions."""

from __future__ import annotations

import pytest
import yaml
from epp.datastore import Datastore, Endpoint, Metrics
from epp.flowcontrol.metrics import FlowControlMetrics
from epp.scheduling.config import parse_config
from epp.telemetry import Telemetry
from prometheus_client import generate_latest

from onebox.box import OneBox
from onebox.envoy.limits import GatewayTimeouts
from onebox.scaler import Decider, Signals, epp_config_document, read_signals, recommended, with_flow_control
from onebox.topology import Autoscaling, TopologyError, load_preset, parse_topology

MODEL = "tiny/a"


def scaling(**fields: object) -> Autoscaling:
    return Autoscaling.model_validate(fields)


def topology(autoscaling: str, extra: str = "") -> str:
    return f"models:\n  - name: a\n    served_name: {MODEL}\n{extra}    autoscaling: {autoscaling}\n"


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        ("{minReplicas: 3, maxReplicas: 2}", "minReplicas \\(3\\) is greater than autoscaling.maxReplicas"),
        ("{targetQueuePerReplica: 0}", "targetQueuePerReplica"),
        ("{targetWaitingPerReplica: -1}", "targetWaitingPerReplica"),
        ("{targetKvCacheUsage: 1.5}", "targetKvCacheUsage"),
        ("{minReplicas: -1}", "minReplicas"),
        ("{idleSeconds: 0}", "idleSeconds"),
        ("{wakeTimeout: 0}", "wakeTimeout"),
        ("{activationQueue: -1}", "activationQueue"),
        ("{maxReplicas: 2, cooldown: 3}", "cooldown"),
    ],
)
def test_bad_autoscaling_is_refused_naming_the_field(block: str, reason: str) -> None:
    with pytest.raises(TopologyError, match=reason):
        parse_topology(topology(block))


def test_replicas_and_autoscaling_together_are_refused() -> None:
    with pytest.raises(TopologyError, match="replicas or autoscaling, not both"):
        parse_topology(topology("{maxReplicas: 2}", extra="    replicas: 2\n"))


def test_autoscaling_bring_your_own_endpoints_is_refused() -> None:
    text = "models:\n  - {name: a, served_name: x, endpoints: ['http://127.0.0.1:8000'], autoscaling: {}}\n"
    with pytest.raises(TopologyError, match="autoscaling needs pods the box starts"):
        parse_topology(text)


def test_per_pod_options_may_name_any_replica_up_to_max_replicas() -> None:
    text = topology("{minReplicas: 0, maxReplicas: 3}", extra="    pods: {2: {max_num_seqs: 2}}\n")
    [model] = parse_topology(text).models
    assert (model.initial_replicas, model.most_replicas, model.sim_for(2).max_num_seqs) == (0, 3, 2)


def test_the_elastic_preset_has_a_model_at_zero_with_a_short_idle_period() -> None:
    models = {m.name: m for m in load_preset("elastic").models}
    assert len(models) == 2
    cold = [m for m in models.values() if m.autoscaling and m.autoscaling.min_replicas == 0]
    assert len(cold) == 1
    assert cold[0].autoscaling is not None
    assert cold[0].autoscaling.idle_seconds == 20
    assert cold[0].initial_replicas == 0


def test_a_wake_timeout_beyond_the_gateways_ext_proc_timeout_is_refused() -> None:
    elastic = load_preset("elastic")
    with pytest.raises(ValueError, match=r"phi3: autoscaling.wakeTimeout \(60 s\)"):
        OneBox(elastic, timeouts=GatewayTimeouts(ext_proc_message=30))
    assert OneBox(elastic).timeouts.ext_proc_message >= 65  # raised from the default 10 s
    other = OneBox(elastic, timeouts=GatewayTimeouts(upstream_idle=100)).timeouts  # as the CLI passes them
    assert (other.ext_proc_message, other.upstream_idle) == (65, 100)


def test_round_robin_with_autoscaled_models_is_refused() -> None:
    with pytest.raises(ValueError, match="round_robin needs fixed pods"):
        OneBox(load_preset("elastic"), round_robin=True)


def epp_metrics(queued: int, pods: dict[str, tuple[int, float]]) -> str:
    """An EPP's /metrics with ``queued`` requests of MODEL in its queue and pods -> (waiting, kv)."""
    datastore = Datastore()
    for i, (name, (waiting, kv)) in enumerate(pods.items()):
        metrics = Metrics(waiting=waiting, kv_cache_usage=kv)
        datastore.upsert(Endpoint(name=name, ip="127.0.0.1", port=8000 + i, metrics=metrics))
    telemetry = Telemetry("epp", datastore)
    queue = FlowControlMetrics(telemetry.registry, "a")
    for _ in range(queued):
        queue.queued("tenant", 0, MODEL, 10, 1)
    queue.queued("tenant", 0, "other/model", 10, 1)
    return generate_latest(telemetry.registry).decode()


def test_signals_are_read_from_the_epps_own_metrics_for_the_model_and_its_pods() -> None:
    texts = [
        epp_metrics(2, {"a-0": (3, 0.5), "a-1": (1, 0.1), "b-0": (9, 0.9)}),
        epp_metrics(1, {"a-0": (2, 0.6), "a-1": (1, 0.1)}),
    ]
    signals = read_signals(texts, MODEL, {"a-0", "a-1"})
    assert signals.queued == 3  # each EPP replica's own queue, summed
    assert signals.waiting == 4  # each pod once (its largest reading): 3 + 1
    assert signals.kv_cache == pytest.approx((0.6 + 0.1) / 2)
    assert signals.in_flight == 0


def test_desired_replicas_are_the_largest_trigger_within_min_and_max() -> None:
    s = scaling(minReplicas=0, maxReplicas=4, targetQueuePerReplica=2, targetWaitingPerReplica=4)
    assert recommended(s, 1, Signals(queued=5)) == 3  # ceil(5 / 2)
    assert recommended(s, 1, Signals(waiting=9)) == 3  # ceil(9 / 4)
    assert recommended(s, 2, Signals(kv_cache=0.8)) == 2  # ceil(2 x 0.8 / 0.8)
    assert recommended(s, 1, Signals(queued=100)) == 4  # max
    assert recommended(s, 1, Signals()) == 1  # the HPA never asks for 0; KEDA's cooldown does


def test_a_model_at_zero_wakes_on_its_first_queued_request_beyond_the_activation_threshold() -> None:
    decider = Decider(scaling(minReplicas=0, maxReplicas=2), last_active=0.0)
    assert decider.decide(100.0, 0, Signals()) == 0
    assert decider.decide(101.0, 0, Signals(queued=1)) == 1
    strict = Decider(scaling(minReplicas=0, maxReplicas=2, activationQueue=2), last_active=0.0)
    assert strict.decide(100.0, 0, Signals(queued=2)) == 0  # KEDA: active above the threshold
    assert strict.decide(101.0, 0, Signals(queued=3)) == 2  # ceil(3 / 2)


def test_an_idle_model_goes_to_zero_after_idle_seconds_and_not_before() -> None:
    decider = Decider(scaling(minReplicas=0, maxReplicas=2, idleSeconds=20), last_active=0.0)
    assert decider.decide(1.0, 1, Signals(in_flight=1)) == 1
    assert decider.decide(20.0, 1, Signals()) == 1  # 19 s idle
    assert decider.decide(21.5, 1, Signals()) == 0


def test_a_model_with_a_minimum_keeps_it_and_scales_down_only_after_the_window() -> None:
    decider = Decider(scaling(minReplicas=1, maxReplicas=3, idleSeconds=10), last_active=0.0)
    assert decider.decide(0.0, 1, Signals(queued=6)) == 3
    assert decider.decide(5.0, 3, Signals()) == 3  # stabilization: 3 was asked 5 s ago
    assert decider.decide(11.0, 3, Signals()) == 1
    assert decider.decide(100.0, 1, Signals()) == 1  # never below minReplicas


def test_the_flow_control_config_is_a_valid_endpoint_picker_config_with_the_gate_and_ttl() -> None:
    document = with_flow_control(epp_config_document(), no_endpoint_ttl=45, queue_depth=0, maxRequests=100)
    config = parse_config(yaml.safe_dump(document))
    flow = config.flow_control_config()
    assert flow is not None
    assert (flow.no_endpoint_request_ttl, flow.max_requests) == (45.0, 100)
    assert config.saturation_detector.queue_depth_threshold == 0
    # The profile's scheduling is kept.
    default = parse_config(yaml.safe_dump(epp_config_document()))
    assert config.scheduling_profiles == default.scheduling_profiles
