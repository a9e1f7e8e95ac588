import random
import time

import pytest
from epp.datastore import Datastore, EndpointRemoved
from epp.scheduling import LLMRequest, Scheduler, load_profile, parse_config

from tests.epp.scheduling.builders import GEMMA, PHI3, QWEN, endpoint, request

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
LONG_PROMPT = "You are a helpful assistant that answers in French. " * 40 + "Translate: good morning."


def scheduler(text: str, seed: int = 1) -> Scheduler:
    return Scheduler.from_config(parse_config(HEADER + text), rng=random.Random(seed))


def default_scheduler(seed: int = 1) -> Scheduler:
    return Scheduler.from_config(load_profile("default"), rng=random.Random(seed))


def test_a_phi3_request_never_lands_on_a_gemma_only_endpoint_even_when_it_scores_best():
    gemma = endpoint("gemma-0", models=(GEMMA,), waiting=0, kv=0.0)
    phi3 = endpoint("phi3-0", models=(PHI3,), waiting=40, kv=0.95)
    pick = default_scheduler()
    for _ in range(50):
        result = pick.schedule(request(PHI3, LONG_PROMPT), [gemma, phi3], explain=True)
        assert result.endpoint is phi3
        assert gemma.address not in result.scores


def test_a_request_for_a_model_nobody_serves_gets_no_endpoint_and_says_why():
    result = default_scheduler().schedule(
        request(QWEN), [endpoint("gemma-0"), endpoint("phi3-0", models=(PHI3,))]
    )
    assert result.endpoint is None
    assert result.endpoints == ()
    assert result.rejected_by == "model"


def test_a_lora_request_goes_only_to_endpoints_that_serve_the_adapter():
    plain = endpoint("plain", models=(GEMMA,))
    with_adapter = endpoint("with-adapter", models=(GEMMA,), loras={"sql-lora": GEMMA}, waiting=30)
    assert default_scheduler().schedule(request("sql-lora"), [plain, with_adapter]).endpoint is with_adapter


def test_the_subset_hint_restricts_the_pick():
    pods = [endpoint(f"gemma-{i}", waiting=i * 10, updated_at=time.monotonic() + 60) for i in range(4)]
    allowed = {pods[2].address, pods[3].address}
    for _ in range(20):
        result = default_scheduler().schedule(request(subset=allowed), pods, explain=True)
        assert result.endpoint is pods[2]  # the better of the two allowed, though gemma-0 scores best
        assert set(result.scores) == allowed


@pytest.mark.parametrize("subset", [set(), {"10.9.9.9:8000"}])
def test_a_subset_hint_matching_no_candidate_gives_no_endpoint(subset):
    result = default_scheduler().schedule(request(subset=subset), [endpoint("gemma-0")])
    assert result.endpoint is None
    assert result.rejected_by == "subset"


def test_the_subset_hint_never_overrides_the_model():
    gemma, phi3 = endpoint("gemma-0"), endpoint("phi3-0", models=(PHI3,))
    result = default_scheduler().schedule(request(PHI3, subset={gemma.address}), [gemma, phi3])
    assert result.endpoint is None


def test_each_score_is_clamped_to_0_1_and_multiplied_by_its_weight():
    pick = scheduler(
        """
plugins:
- {type: kv-cache-utilization-scorer}
- {type: queue-scorer}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: kv-cache-utilization-scorer, weight: 5}
  - {pluginRef: queue-scorer}
"""
    )
    over = endpoint("reports-negative-usage", kv=-0.5, waiting=4)  # raw kv score 1.5
    under = endpoint("reports-overfull", kv=1.5, waiting=0)  # raw kv score -0.5
    result = pick.schedule(request(), [over, under], explain=True)
    assert result.scores == {
        over.address: {"kv-cache-utilization-scorer": 5.0, "queue-scorer": 0.0},
        under.address: {"kv-cache-utilization-scorer": 0.0, "queue-scorer": 1.0},
    }
    assert result.endpoint is over


def test_weights_decide_between_disagreeing_scorers():
    idle_but_full = endpoint("idle-but-full", waiting=0, kv=0.9)
    busy_but_empty = endpoint("busy-but-empty", waiting=8, kv=0.1)
    text = """
plugins:
- type: kv-cache-utilization-scorer
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: kv-cache-utilization-scorer, weight: KV}
  - {pluginRef: queue-scorer, weight: QUEUE}
"""
    queue_heavy = scheduler(text.replace("KV", "1").replace("QUEUE", "3"))
    kv_heavy = scheduler(text.replace("KV", "3").replace("QUEUE", "1"))
    assert queue_heavy.schedule(request(), [idle_but_full, busy_but_empty]).endpoint is idle_but_full
    assert kv_heavy.schedule(request(), [idle_but_full, busy_but_empty]).endpoint is busy_but_empty


def test_filters_run_in_order_and_the_result_names_the_one_that_left_nobody():
    pick = scheduler(
        """
plugins:
- name: nvlink
  type: label-selector-filter
  parameters: {matchLabels: {llm-d.ai/kv-backend: nvlink}}
- {type: decode-filter}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: nvlink}, {pluginRef: decode-filter}]
"""
    )
    prefill_nvlink = endpoint("prefill", labels={"llm-d.ai/kv-backend": "nvlink", "llm-d.ai/role": "prefill"})
    decode_plain = endpoint("decode", labels={"llm-d.ai/role": "decode"})
    assert pick.schedule(request(), [decode_plain]).rejected_by == "nvlink"
    # nvlink keeps only the prefill endpoint, which decode-filter then drops.
    assert pick.schedule(request(), [prefill_nvlink, decode_plain]).rejected_by == "decode-filter"
    both = endpoint("both", labels={"llm-d.ai/kv-backend": "nvlink", "llm-d.ai/role": "both"})
    assert pick.schedule(request(), [prefill_nvlink, decode_plain, both]).endpoint is both


def test_a_profile_without_a_picker_takes_the_max_score_picker():
    pick = scheduler(
        """
plugins: [{type: queue-scorer}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}]}]
"""
    )
    short, long = endpoint("short", waiting=1), endpoint("long", waiting=9)
    assert all(pick.schedule(request(), [long, short]).endpoint is short for _ in range(20))


def test_max_num_of_endpoints_returns_ranked_fallbacks():
    pick = scheduler(
        """
plugins:
- {type: queue-scorer}
- {type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""
    )
    pods = [endpoint("worst", waiting=9), endpoint("best", waiting=0), endpoint("second", waiting=3)]
    result = pick.schedule(request(), pods)
    assert [e.name for e in result.endpoints] == ["best", "second"]
    assert result.endpoint is result.endpoints[0]


def test_prefix_affinity_sends_a_repeated_long_prompt_back_to_the_same_endpoint():
    pods = [endpoint(f"gemma-{i}") for i in range(4)]
    pick = default_scheduler(seed=3)
    first = pick.schedule(request(prompt=LONG_PROMPT), pods).endpoint
    assert first is not None
    for _ in range(20):
        result = pick.schedule(request(prompt=LONG_PROMPT), pods, explain=True)
        assert result.endpoint is first
        scores = {address: plugins["prefix-affinity-scorer"] for address, plugins in result.scores.items()}
        assert scores[first.address] > 0.9 > max(v for a, v in scores.items() if a != first.address)


def test_prefix_affinity_gives_way_when_the_warm_endpoint_is_overloaded():
    warm, cold = endpoint("warm"), endpoint("cold")
    pick = default_scheduler()
    pick.schedule(request(prompt=LONG_PROMPT), [warm])
    warm.metrics.waiting, warm.metrics.updated_at = 20, time.monotonic() + 60
    cold.metrics.updated_at = warm.metrics.updated_at
    assert pick.schedule(request(prompt=LONG_PROMPT), [warm, cold]).endpoint is cold


def test_a_removed_endpoint_is_forgotten():
    datastore = Datastore()
    pick = default_scheduler()
    datastore.subscribe(
        lambda event: pick.forget(event.endpoint.address) if isinstance(event, EndpointRemoved) else None
    )
    pod = datastore.upsert(endpoint("gemma-0"))
    pick.schedule(request(prompt=LONG_PROMPT), [pod])
    prefix = pick.profiles["default"].scorers[0][0]
    assert prefix.index.size(pod.address) > 0

    datastore.remove(pod.address)
    assert prefix.index.size(pod.address) == 0


def test_the_same_seed_makes_the_same_picks():
    pods = [endpoint(f"gemma-{i}") for i in range(5)]
    prompts = [f"prompt number {i} " * 10 for i in range(30)]

    def picks(seed):
        pick = default_scheduler(seed)
        return [pick.schedule(LLMRequest("r", GEMMA, p), pods).endpoint for p in prompts]

    assert picks(42) == picks(42)
    assert len({e.name for e in picks(42) if e is not None}) > 1


def test_a_nan_score_counts_as_zero():
    pick = scheduler(
        """
plugins: [{type: kv-cache-utilization-scorer}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: kv-cache-utilization-scorer}]}]
"""
    )
    broken, fine = endpoint("broken-metrics", kv=float("nan")), endpoint("fine", kv=0.9)
    result = pick.schedule(request(), [broken, fine], explain=True)
    assert result.scores[broken.address] == {"kv-cache-utilization-scorer": 0.0}
    assert result.endpoint is fine
