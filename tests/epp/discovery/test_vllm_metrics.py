"""Reading the scheduler's gauges out of vLLM's Prometheus text."""

from __future__ import annotations

from pathlib import Path

import pytest
from epp.discovery import MetricsParseError, parse_vllm_metrics
from epp.discovery.vllm_metrics import parse_labels
from prometheus_client.parser import text_string_to_metric_families

REAL_LOOKING = (Path(__file__).parent / "fixtures" / "vllm_metrics.txt").read_text()


def test_a_real_vllm_page_yields_queue_kv_cache_lora_and_cache_config() -> None:
    metrics = parse_vllm_metrics(REAL_LOOKING, now=123.0)
    assert metrics.waiting == 5
    assert metrics.running == 12
    assert metrics.kv_cache_usage == pytest.approx(0.6734)
    # The newest lora_requests_info sample (largest timestamp value) wins, not the last line.
    assert metrics.running_adapters == {"sql-lora"}
    assert metrics.waiting_adapters == {"tweet-summary", "chat-lora"}
    assert metrics.max_loras == 4
    assert metrics.block_size == 16
    assert metrics.num_gpu_blocks == 27873
    assert metrics.updated_at == 123.0


def test_the_fast_parser_agrees_with_prometheus_clients_parser() -> None:
    reference: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(REAL_LOOKING):
        for sample in family.samples:
            reference.setdefault(sample.name, []).append((sample.labels, sample.value))
    metrics = parse_vllm_metrics(REAL_LOOKING, now=1.0)
    assert metrics.waiting == sum(v for _, v in reference["vllm:num_requests_waiting"])
    assert metrics.running == sum(v for _, v in reference["vllm:num_requests_running"])
    newest_labels, _ = max(reference["vllm:lora_requests_info"], key=lambda s: s[1])
    assert metrics.running_adapters == set(newest_labels["running_lora_adapters"].split(","))
    [(cache_labels, _)] = reference["vllm:cache_config_info"]
    line = next(line for line in REAL_LOOKING.splitlines() if line.startswith("vllm:cache_config_info{"))
    assert parse_labels(line[line.index("{") + 1 : line.rindex("}")]) == cache_labels


def test_label_values_keep_escaped_quotes_commas_and_braces() -> None:
    labels = parse_labels(r'a="x",b="say \"hi\", {ok}",c="back\\slash",d="line\nbreak",')
    assert labels == {"a": "x", "b": 'say "hi", {ok}', "c": "back\\slash", "d": "line\nbreak"}


def test_an_older_vllm_without_kv_cache_usage_falls_back_to_gpu_cache_usage() -> None:
    text = REAL_LOOKING.replace("vllm:kv_cache_usage_perc", "vllm:something_else").replace(
        'vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.6734',
        'vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.25',
    )
    assert parse_vllm_metrics(text, now=1.0).kv_cache_usage == pytest.approx(0.25)


def test_kv_cache_usage_is_preferred_over_the_deprecated_name_when_both_exist() -> None:
    text = (
        'vllm:num_requests_waiting{model_name="m"} 0\n'
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.9\n'
        'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n'
    )
    assert parse_vllm_metrics(text, now=1.0).kv_cache_usage == pytest.approx(0.1)


def test_two_model_servers_in_one_pod_add_up_their_queues_and_report_the_fullest_cache() -> None:
    gemma, phi = 'model_name="google/gemma-2b-it"', 'model_name="microsoft/Phi-3-mini-4k-instruct"'
    text = f"""\
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{{gemma}}} 3.0
vllm:num_requests_waiting{{{phi}}} 4.0
vllm:num_requests_running{{{gemma}}} 10.0
vllm:num_requests_running{{{phi}}} 6.0
vllm:kv_cache_usage_perc{{{gemma}}} 0.2
vllm:kv_cache_usage_perc{{{phi}}} 0.7
vllm:lora_requests_info{{max_lora="2",{gemma},running_lora_adapters="a",waiting_lora_adapters=""}} 10.0
vllm:lora_requests_info{{max_lora="2",{gemma},running_lora_adapters="old",waiting_lora_adapters=""}} 5.0
vllm:lora_requests_info{{max_lora="3",{phi},running_lora_adapters="b",waiting_lora_adapters="c"}} 7.0
"""
    metrics = parse_vllm_metrics(text, now=1.0)
    assert (metrics.waiting, metrics.running) == (7, 16)
    assert metrics.kv_cache_usage == pytest.approx(0.7)
    assert metrics.running_adapters == {"a", "b"}
    assert metrics.waiting_adapters == {"c"}
    assert metrics.max_loras == 5


def test_metrics_without_labels_timestamps_and_windows_line_endings_are_read() -> None:
    text = "vllm:num_requests_waiting 2 1732400000000\r\nvllm:num_requests_running 1\r\n"
    metrics = parse_vllm_metrics(text, now=1.0)
    assert (metrics.waiting, metrics.running, metrics.kv_cache_usage) == (2, 1, 0.0)


def test_a_page_without_vllm_queue_gauges_is_not_taken_for_an_idle_server() -> None:
    with pytest.raises(MetricsParseError, match="not a vLLM /metrics page"):
        parse_vllm_metrics("# HELP up\nup 1\n", now=1.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('vllm:num_requests_waiting{model_name="m"} many\n', "value 'many' is not a number"),
        ('vllm:num_requests_waiting{model_name="m" 3\n', "unterminated label set"),
        (
            "vllm:num_requests_waiting 1\nvllm:lora_requests_info{max_lora=four} 1\n",
            "malformed labels",
        ),
        (
            'vllm:num_requests_waiting 1\nvllm:cache_config_info{block_size="sixteen"} 1\n',
            "label block_size='sixteen' is not a number",
        ),
    ],
)
def test_a_malformed_wanted_sample_is_an_error_naming_the_problem(text: str, expected: str) -> None:
    with pytest.raises(MetricsParseError, match=expected):
        parse_vllm_metrics(text, now=1.0)


def test_not_a_number_samples_do_not_poison_the_queue_sums() -> None:
    text = 'vllm:num_requests_waiting{e="0"} NaN\nvllm:num_requests_waiting{e="1"} 2\n'
    assert parse_vllm_metrics(text, now=1.0).waiting == 2
