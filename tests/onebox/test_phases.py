"""``onebox.envoy.phases``: each request's phases in an Envoy access log, and their summary."""

from __future__ import annotations

import json
from pathlib import Path

from onebox.envoy.bootstrap import PoolRoute, gateway_config, round_robin_config
from onebox.envoy.phases import parse_line, phase_summary, read_phases, with_phase_log


def _manager(config: dict[str, object]) -> dict[str, object]:
    listener = config["static_resources"]["listeners"][0]  # type: ignore[index]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def test_the_gateway_logs_its_ext_proc_filters_calls_and_round_robin_only_envoys(tmp_path: Path) -> None:
    pools = [PoolRoute(name="gemma", models=("google/gemma-2b-it",), epp="127.0.0.1:9002")]
    gateway = gateway_config(bbr=["127.0.0.1:9001"], pools=pools)
    logged = with_phase_log(gateway, tmp_path / "gw.jsonl")
    assert "access_log" not in _manager(gateway)  # a copy: the original is left as it was
    [log] = _manager(logged)["access_log"]  # type: ignore[misc]
    fields = log["typed_config"]["log_format"]["json_format"]
    assert log["typed_config"]["path"] == str(tmp_path / "gw.jsonl")
    assert fields["to_pod"] == "%COMMON_DURATION(DS_RX_BEG:US_TX_BEG:us)%"
    assert fields["bbr.request_body"] == (
        "%FILTER_STATE(envoy.filters.http.ext_proc.bbr:FIELD:request_body_total_latency_us)%"
    )
    assert "epp.response_headers" in fields
    rr = _manager(with_phase_log(round_robin_config(["127.0.0.1:8000"]), tmp_path / "rr.jsonl"))
    rr_fields = rr["access_log"][0]["typed_config"]["log_format"]["json_format"]  # type: ignore[index]
    assert not any(name.startswith(("bbr.", "epp.")) for name in rr_fields)


def test_a_phase_envoy_did_not_time_is_absent_and_only_served_posts_are_summarised(tmp_path: Path) -> None:
    served = {"method": "POST", "status": 200, "pod": "10.0.0.1:8000", "to_pod": 4000, "headers_out": "900",
              "bbr.request_body": "1500", "epp.response_headers": None, "total": 60000,
              "guard.request_headers": "700"}  # fmt: skip
    model_list = {"method": "GET", "status": 200, "pod": "-", "to_pod": None, "total": 300}
    refused = {"method": "POST", "status": "404", "pod": "-", "to_pod": 2000}
    path = tmp_path / "phases.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (served, model_list, refused)) + '{"method": "PO')
    requests, offset = read_phases(path)
    assert len(requests) == 3  # the last line is not complete yet: left for the next read
    assert requests[0].phases == {"to_pod": 0.004, "headers_out": 0.0009, "bbr.request_body": 0.0015,
                                  "total": 0.06, "guard.request_headers": 0.0007}  # fmt: skip
    assert (requests[1].pod, requests[2].status) == (None, 404)
    # Envoy's phases and the BBR's and EPP's calls first, another filter's after them.
    figures = [(f.phase, f.count, f.p50) for f in phase_summary(requests)]
    assert figures == [("to_pod", 1, 0.004), ("headers_out", 1, 0.0009), ("total", 1, 0.06),
                       ("bbr.request_body", 1, 0.0015), ("guard.request_headers", 1, 0.0007)]  # fmt: skip
    with path.open("a") as f:
        f.write('ST", "status": 200}\n')
    [rest], _ = read_phases(path, offset)
    assert rest == parse_line('{"method": "POST", "status": 200}')
