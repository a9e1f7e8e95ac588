"""Where a request's time goes inside Envoy: an access log of per-phase durations, and its reader.

``with_phase_log(config, path)`` adds to a configuration's listener an access log that writes one
JSON line per request: the durations between Envoy's stream timestamps (``%COMMON_DURATION%``, in
microseconds) and, for each ext_proc filter (the BBR, the EPP), the latency of its calls as Envoy
timed them (the filter's logging info, ``%FILTER_STATE(<filter>:FIELD:...)%``). A gateway without
ext_proc filters (round robin) logs the same phases and no ext_proc fields. ``read_phases`` reads
such a log back (``wait_for_served`` until a run's requests are all there); ``phase_summary`` gives
each phase's p50 and mean.

The phases, for a request the gateway routed to a pod:

* ``body_in``: from its first byte in to its last (the client sending its body);
* ``to_pod``: from its first byte in to its first byte sent to the pod. Through the gateway that is
  the body coming in and the processors' request calls, one filter after the other, each answering
  once it has read the whole body; round robin streams the body on as it comes, so its ``to_pod``
  is Envoy alone and the body's upload falls in its later phases (compare ``body_in`` for large
  bodies);
* ``pod_to_headers``: from its last byte sent to the pod to the pod's first byte back: for a
  stream, vLLM (and the simulator, as it) sends its headers at once, and the request's queue and
  prefill come after them; for a whole answer, its whole generation;
* ``headers_out``: from the pod's first byte to the first byte sent to the client (the EPP's
  response-headers call; for a stream it overlaps the pod's queue and prefill);
* ``<filter>.request_headers`` / ``.request_body`` / ``.response_headers``: that filter's calls
  (with the request body streamed in full duplex, a filter answers the headers only once it has
  read the body: its two request calls overlap).

Debugging only: the log holds no header values, but it is a line per request.
"""

from __future__ import annotations

import asyncio
import copy
import json
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
# Envoy's stream timestamps: downstream (client) and upstream (pod), receive and send, begin and end.
_DURATIONS = {
    "body_in": "DS_RX_BEG:DS_RX_END",
    "to_pod": "DS_RX_BEG:US_TX_BEG",
    "pod_to_headers": "US_TX_END:US_RX_BEG",
    "headers_out": "US_RX_BEG:DS_TX_BEG",
    "total": "DS_RX_BEG:DS_TX_END",
}
# The ext_proc filter's logging info fields, by the phase name they get here.
_CALLS = {
    "request_headers": "request_header_latency_us",
    "request_body": "request_body_total_latency_us",
    "response_headers": "response_header_latency_us",
}
PHASES = (*_DURATIONS, *(f"{f}.{c}" for f in ("bbr", "epp") for c in _CALLS))


def _short(filter_name: str) -> str:
    """``envoy.filters.http.ext_proc.epp`` -> ``epp``."""
    return filter_name.rsplit(".", 1)[-1]


def _manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def with_phase_log(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """A copy of ``config`` whose listener also writes each request's phases to ``path``."""
    changed = copy.deepcopy(config)
    manager = _manager(changed)
    fields = {"method": "%REQ(:METHOD)%", "status": "%RESPONSE_CODE%", "pod": "%UPSTREAM_HOST%"}
    for phase, points in _DURATIONS.items():
        fields[phase] = f"%COMMON_DURATION({points}:us)%"
    for f in manager.get("http_filters", []):
        name = f["name"]
        if ".ext_proc." in name:
            for phase, field in _CALLS.items():
                fields[f"{_short(name)}.{phase}"] = f"%FILTER_STATE({name}:FIELD:{field})%"
    manager.setdefault("access_log", []).append({
        "name": "envoy.access_loggers.file",
        "typed_config": {"@type": _FILE_LOG, "path": str(path), "log_format": {"json_format": fields}},
    })  # fmt: skip
    return changed


@dataclass(frozen=True)
class RequestPhases:
    """One request's phases in seconds (absent: the phase did not happen, or the filter is not there)."""

    method: str
    status: int
    pod: str | None
    phases: Mapping[str, float]


def _whole(value: object) -> int | None:
    """A whole number as Envoy writes one: a JSON number or a string of digits; None for ``-``/null."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _seconds(value: object) -> float | None:
    micros = _whole(value)
    return None if micros is None else micros / 1e6


_NOT_PHASES = ("method", "status", "pod")


def parse_line(line: str) -> RequestPhases:
    """One log line; every duration in it (an ext_proc filter of any name included) is a phase."""
    record = json.loads(line)
    phases = {p: s for p, v in record.items() if p not in _NOT_PHASES and (s := _seconds(v)) is not None}
    pod = record.get("pod")
    return RequestPhases(
        method=str(record.get("method") or ""),
        status=_whole(record.get("status")) or 0,
        pod=pod if isinstance(pod, str) and pod not in ("", "-") else None,
        phases=phases,
    )


def read_phases(path: Path, offset: int = 0) -> tuple[list[RequestPhases], int]:
    """The complete lines of ``path`` from byte ``offset``, and the offset after them."""
    if not path.exists():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    lines = complete.split(b"\n")
    return [parse_line(line.decode()) for line in lines if line.strip()], offset + len(complete)


def served(requests: Iterable[RequestPhases]) -> list[RequestPhases]:
    """The answered POSTs a pod served (not the model list, not the gateway's own answers)."""
    return [r for r in requests if r.method == "POST" and r.status == 200 and r.pod is not None]


async def wait_for_served(
    path: Path, offset: int, count: int, *, patience: float = 5.0, poll: float = 0.05
) -> tuple[list[RequestPhases], int]:
    """Read ``path`` from ``offset`` until at least ``count`` served requests are in (Envoy writes
    its file logs in batches) or ``patience`` seconds pass; what was read, and the offset after it."""
    deadline = asyncio.get_running_loop().time() + patience
    requests: list[RequestPhases] = []
    while True:
        more, offset = read_phases(path, offset)
        requests.extend(more)
        if len(served(requests)) >= count or asyncio.get_running_loop().time() >= deadline:
            return requests, offset
        await asyncio.sleep(poll)


@dataclass(frozen=True)
class PhaseFigure:
    phase: str
    count: int
    p50: float
    mean: float


def phase_summary(requests: Iterable[RequestPhases]) -> list[PhaseFigure]:
    """Each phase's p50 and mean over the answered POSTs a pod served (:func:`served`), in the order
    of :data:`PHASES` (then any other filter's, by name); phases no such request had are left out."""
    kept = served(requests)
    seen = {phase for r in kept for phase in r.phases}
    figures = []
    for phase in (*PHASES, *sorted(seen.difference(PHASES))):
        values = [r.phases[phase] for r in kept if phase in r.phases]
        if values:
            median, mean = statistics.median(values), statistics.fmean(values)
            figures.append(PhaseFigure(phase, len(values), median, mean))
    return figures
