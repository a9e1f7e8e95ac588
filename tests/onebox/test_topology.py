"""Topologies: the presets, and bad files rejected with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from onebox.topology import PRESETS, SimOptions, TopologyError, load_preset, load_topology, parse_topology


def test_the_gpu_preset_serves_gemma_and_phi3_in_a_pool_each() -> None:
    gpu = load_preset("gpu")
    assert gpu.served_names == ["google/gemma-2b-it", "microsoft/Phi-3-mini-4k-instruct"]
    assert {pool: [m.replicas for m in ms] for pool, ms in gpu.pools().items()} == {"gemma": [1], "phi3": [1]}


def test_the_tpu_preset_serves_qwen_and_phi3() -> None:
    assert load_preset("tpu").served_names == ["Qwen/Qwen2.5-3B-Instruct", "microsoft/Phi-3-mini-4k-instruct"]


def test_the_scaleout_preset_is_one_model_on_four_replicas() -> None:
    [model] = load_preset("scaleout").models
    assert model.replicas == 4


def test_every_preset_loads() -> None:
    assert [load_preset(p).name for p in PRESETS] == list(PRESETS)


def test_models_may_share_a_pool() -> None:
    topology = parse_topology(
        "models:\n"
        "  - {name: a, served_name: org/a, pool: shared}\n"
        "  - {name: b, served_name: org/b, pool: shared, replicas: 2}\n"
    )
    assert list(topology.pools()) == ["shared"]


def test_simulator_options_become_simulator_flags() -> None:
    options = SimOptions(max_num_seqs=4, itl_ms=5.0, failure_kind=429, loras={"sql-lora": "org/a"})
    assert options.flags() == [
        "--max-num-seqs", "4", "--itl-ms", "5.0", "--failure-kind", "429", "--lora", "sql-lora=org/a",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("models: []", "at least 1"),
        ("- a\n- b", "expected a mapping"),
        ("models: [{name: a, served_name: x}, {name: a, served_name: y}]", "model name repeated: a"),
        ("models: [{name: a, served_name: x}, {name: b, served_name: x}]", "served_name repeated: x"),
        ("models: [{name: Gemma_2, served_name: x}]", "DNS label"),
        ("models: [{name: a, served_name: x, replicas: 0}]", "replicas"),
        ("models: [{name: a, served_name: x, sim: {max_num_seqs: 4, warp: 9}}]", "warp"),
        ("models: [{name: a, served_name: x}", "not valid YAML"),
    ],
)
def test_a_bad_topology_is_rejected_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(TopologyError, match=reason):
        parse_topology(text)


def test_unknown_presets_and_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="unknown preset 'h100'"):
        load_preset("h100")
    with pytest.raises(TopologyError, match="cannot read topology"):
        load_topology(tmp_path / "nope.yaml")


HETEROGENEOUS = """
models:
  - name: gemma
    served_name: google/gemma-2b-it
    replicas: 3
    sim: {max_num_seqs: 16, itl_ms: 12}
    pods:
      0: {max_num_seqs: 8, itl_ms: 24}
"""


def test_one_pod_can_have_half_the_slots_and_twice_the_latency_of_the_others() -> None:
    [model] = parse_topology(HETEROGENEOUS).models
    assert model.sim_for(0).flags() == ["--max-num-seqs", "8", "--itl-ms", "24.0"]
    others = ["--max-num-seqs", "16", "--itl-ms", "12.0"]
    assert model.sim_for(1).flags() == model.sim_for(2).flags() == others


def test_per_pod_options_for_a_replica_that_does_not_exist_are_refused_naming_it() -> None:
    with pytest.raises(TopologyError, match=r"pods \[3\]: no such replica"):
        parse_topology(HETEROGENEOUS.replace("0: {", "3: {"))


def test_the_simulator_context_limit_is_a_topology_option() -> None:
    options = SimOptions(max_model_len=65536, kv_cache_blocks=8192)
    assert "--max-model-len" in options.flags()


def test_per_pod_simulator_options_on_bring_your_own_endpoints_are_refused() -> None:
    text = (
        "models:\n  - name: mine\n    served_name: m\n    endpoints: [http://127.0.0.1:8000]\n"
        "    pods: {0: {max_num_seqs: 2}}\n"
    )
    with pytest.raises(TopologyError, match="'pods'"):
        parse_topology(text)


def test_a_pool_of_a_hundred_simulated_pods_runs_in_one_process() -> None:
    topology = parse_topology("models: [{name: big, served_name: x, replicas: 100, one_process: true}]")
    assert topology.models[0].replicas == 100
    assert topology.models[0].one_process


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("models: [{name: a, served_name: x, replicas: 17}]", "need one_process: true"),
        ("models: [{name: a, served_name: x, replicas: 2, one_process: true, pods: {0: {itl_ms: 1}}}]",
         "one_process takes no pods"),
        ("models: [{name: a, served_name: x, backend: vllm, one_process: true}]",
         "one_process needs backend: sim"),
        ("models: [{name: a, served_name: x, one_process: true, autoscaling: {maxReplicas: 2}}]",
         "one_process takes no autoscaling"),
    ],
)
def test_one_process_pools_are_refused_where_they_cannot_work(text: str, reason: str) -> None:
    with pytest.raises(TopologyError, match=reason):
        parse_topology(text)


def test_a_one_process_pool_announces_every_pods_port_and_restarts_on_them() -> None:
    from onebox.children import simulator_pool, simulator_pool_ports

    assert simulator_pool_ports("vllmsim pods serving at ports 9100,9205") == {"http-0": 9100, "http-1": 9205}
    assert simulator_pool_ports("vllmsim big-0 serving x at http://127.0.0.1:9100") is None
    spec = simulator_pool("big-sims-1", "127.0.0.1", ["--model", "x"], pods=2, pod_name="big", first=3)
    first = spec.argv({})
    flags = dict(zip(first[3::2], first[4::2], strict=False))
    assert {k: flags[k] for k in ("--pods", "--base-port", "--first-pod", "--pod-name", "--model")} == {
        "--pods": "2", "--base-port": "0", "--first-pod": "3", "--pod-name": "big", "--model": "x",
    }  # fmt: skip
    again = spec.argv({"http-0": 9100, "http-1": 9205})
    assert again[again.index("--ports") + 1] == "9100,9205"
    assert "--base-port" not in again


def test_a_pool_split_over_processes_names_its_pods_in_one_sequence() -> None:
    text = "models: [{name: big, served_name: x, replicas: 5, one_process: true, sim_processes: 2}]"
    assert parse_topology(text).models[0].sim_processes == 2
    with pytest.raises(TopologyError, match="sim_processes needs one_process"):
        parse_topology("models: [{name: a, served_name: x, replicas: 2, sim_processes: 2}]")
    with pytest.raises(TopologyError, match="more sim_processes"):
        parse_topology("models: [{name: a, served_name: x, replicas: 2, one_process: yes, sim_processes: 3}]")
