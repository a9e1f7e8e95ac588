"""Read the few vLLM gauges the scheduler needs out of a Prometheus text exposition.

This runs 20 times a second per endpoint, so instead of a general parser it looks only for the
wanted metric names (``str.find`` over the text) and parses labels only for the two ``*_info``
metrics. When a server exposes several series of one metric (several ``model_name`` or ``engine``
label sets), queue lengths and capacities are summed, KV-cache usage takes the fullest cache, and
LoRA adapters are the union of each series' newest sample.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Mapping

from epp.datastore import Metrics

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
GPU_CACHE_USAGE = "vllm:gpu_cache_usage_perc"  # the name before vLLM v1
LORA_INFO = "vllm:lora_requests_info"
CACHE_CONFIG_INFO = "vllm:cache_config_info"


class MetricsParseError(ValueError):
    """A ``/metrics`` text the EPP cannot use; the message names the metric and what is wrong."""


_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_ESCAPE = re.compile(r"\\(.)")
_UNESCAPED = {"n": "\n", "\\": "\\", '"': '"'}


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPE.sub(lambda m: _UNESCAPED.get(m.group(1), m.group(0)), value)


def parse_labels(text: str) -> dict[str, str]:
    """``a="x",b="y, \\"z\\""`` -> ``{"a": "x", "b": 'y, "z"'}`` (Prometheus label escapes)."""
    labels: dict[str, str] = {}
    position = 0
    end = len(text.rstrip())
    while position < end:
        match = _LABEL.match(text, position)
        if match is None:
            raise MetricsParseError(f"malformed labels at {text[position : position + 40]!r}")
        labels[match.group(1)] = _unescape(match.group(2))
        position = match.end()
    return labels


# The *_info label sets repeat scrape after scrape; parse each distinct one once.
_labels_of = functools.lru_cache(maxsize=256)(parse_labels)


def _samples(text: str, name: str) -> Iterator[tuple[str, float]]:
    """``(labels_text, value)`` of every sample of ``name``; ``text`` must start with a newline."""
    needle = "\n" + name
    skip = len(needle)
    position = text.find(needle)
    while position != -1:
        start = position + skip
        following = text[start : start + 1]
        if following in ("{", " ", "\t"):
            line_end = text.find("\n", start)
            line = text[start:] if line_end == -1 else text[start:line_end]
            if following == "{":
                close = line.rfind("}")
                if close == -1:
                    raise MetricsParseError(f"{name}: unterminated label set in {line[:80]!r}")
                labels, rest = line[1:close], line[close + 1 :]
            else:
                labels, rest = "", line
            fields = rest.split()
            if not fields:
                raise MetricsParseError(f"{name}: sample without a value")
            try:
                value = float(fields[0])
            except ValueError:
                raise MetricsParseError(f"{name}: value {fields[0]!r} is not a number") from None
            yield labels, value
            position = line_end if line_end != -1 else len(text)
        else:
            position = start
        position = text.find(needle, position)


def _int_label(labels: Mapping[str, str], key: str, metric: str) -> int | None:
    raw = labels.get(key)
    if raw is None or raw in ("", "None"):
        return None
    try:
        return int(float(raw))
    except (ValueError, OverflowError):  # int(float("inf")) overflows
        raise MetricsParseError(f"{metric}: label {key}={raw!r} is not a number") from None


def _adapters(raw: str) -> frozenset[str]:
    return frozenset(part for part in (p.strip() for p in raw.split(",")) if part)


def parse_vllm_metrics(text: str, now: float) -> Metrics:
    """A :class:`Metrics` (``updated_at=now``) from vLLM's ``/metrics`` text.

    Raises :class:`MetricsParseError` when the text has neither queue gauge (not a vLLM server)
    or a wanted sample is malformed.
    """
    text = "\n" + text.replace("\r\n", "\n") if "\r" in text else "\n" + text
    waiting = running = 0.0
    seen_queue = False
    for _, value in _samples(text, WAITING):
        seen_queue = True
        if math.isfinite(value):
            waiting += value
    for _, value in _samples(text, RUNNING):
        seen_queue = True
        if math.isfinite(value):
            running += value
    if not seen_queue:
        raise MetricsParseError(f"neither {WAITING} nor {RUNNING} found: not a vLLM /metrics page")

    usage: float | None = None
    for name in (KV_CACHE_USAGE, GPU_CACHE_USAGE):
        for _, value in _samples(text, name):
            if not math.isnan(value) and (usage is None or value > usage):
                usage = value
        if usage is not None:
            break

    newest_lora: dict[str, tuple[float, Mapping[str, str]]] = {}
    labels: Mapping[str, str]
    for label_text, value in _samples(text, LORA_INFO):
        labels = _labels_of(label_text)
        series = labels.get("model_name", "") + "\0" + labels.get("engine", "")
        current = newest_lora.get(series)
        if current is None or value > current[0]:
            newest_lora[series] = (value, labels)
    running_adapters: set[str] = set()
    waiting_adapters: set[str] = set()
    max_loras = 0
    for _, labels in newest_lora.values():
        running_adapters |= _adapters(labels.get("running_lora_adapters", ""))
        waiting_adapters |= _adapters(labels.get("waiting_lora_adapters", ""))
        max_loras += _int_label(labels, "max_lora", LORA_INFO) or 0

    block_size: int | None = None
    num_gpu_blocks = 0
    for label_text, _ in _samples(text, CACHE_CONFIG_INFO):
        labels = _labels_of(label_text)
        if block_size is None:
            block_size = _int_label(labels, "block_size", CACHE_CONFIG_INFO)
        num_gpu_blocks += _int_label(labels, "num_gpu_blocks", CACHE_CONFIG_INFO) or 0

    return Metrics(
        waiting=round(waiting),
        running=round(running),
        kv_cache_usage=min(max(usage, 0.0), 1.0) if usage is not None else 0.0,
        running_adapters=frozenset(running_adapters),
        waiting_adapters=frozenset(waiting_adapters),
        max_loras=max_loras,
        block_size=block_size if block_size else 16,
        num_gpu_blocks=num_gpu_blocks,
        updated_at=now,
    )
