"""bench.timeline: where requests went and what their first token cost, from the client's records."""

from __future__ import annotations

from bench.client import Attempt, RequestResult, RunResult
from bench.timeline import phase_lines, pick_stats, pod_totals, pods_line, ttft_by_occupancy
from onebox.envoy.phases import RequestPhases


def run(label: str, requests: list[tuple[float, str, float]]) -> RunResult:
    """``requests``: (sent at, pod, TTFT) of one model's requests, each on its pod for one second."""
    results = [
        RequestResult(i, "m", start, [Attempt(200, "m", pod)], e2e=1.0, ttft=ttft)
        for i, (start, pod, ttft) in enumerate(requests)
    ]
    return RunResult(label, "http://127.0.0.1:1", "", 10.0, True, results)


def test_a_request_stacked_on_a_busy_pod_counts_as_finding_one_there() -> None:
    stacked = pick_stats("gateway", run("gateway", [(0.0, "p0", 0.06), (0.1, "p0", 0.09), (5.0, "p1", 0.06)]))
    assert stacked.ttft_by_found == {0: [0.06, 0.06], 1: [0.09]}
    assert stacked.busier == 1 / 3  # the second request went to the pod that had one, its sibling none


def test_a_run_line_gives_the_mean_first_token_and_answer_beside_the_median() -> None:
    stats = pick_stats("gateway", run("gateway", [(0.0, "p0", 0.05), (0.1, "p1", 0.05), (2.0, "p0", 0.20)]))
    assert stats.ttft_mean is not None
    assert abs(stats.ttft_mean - 0.1) < 1e-9
    assert stats.e2e_mean == 1.0
    assert stats.line().endswith("TTFT p50 50 ms (mean 100.0)  E2E mean 1000.0 ms")


def test_one_long_wait_shows_in_the_mean_at_its_occupancy_not_in_the_median() -> None:
    # Each request holds its pod for 1 s: the last three each find one request there.
    waits = [(0.0, "p0", 0.05), (0.5, "p0", 0.05), (1.2, "p0", 0.06), (1.9, "p0", 0.70)]
    lines = ttft_by_occupancy([pick_stats("gateway", run("gateway", waits))])
    assert lines[1].startswith("found  1 on the pod: gateway   60.0 ms, mean  270.0 (n=3)")


def test_the_table_compares_first_tokens_at_equal_occupancy_and_shows_where_only_one_side_went() -> None:
    gateway = pick_stats("gateway", run("gateway", [(0.0, "p0", 0.06), (0.1, "p0", 0.09), (5.0, "p1", 0.06)]))
    robin = pick_stats("round-robin", run("round-robin", [(0.0, "p0", 0.05), (0.1, "p1", 0.05)]))
    again = pick_stats("round-robin", run("round-robin", [(0.0, "p0", 0.04), (0.1, "p1", 0.06)]))
    lines = ttft_by_occupancy([gateway, robin, again])
    assert len(lines) == 2
    # Found idle pods: the gateway's 60 ms against round robin's 50 ms, both of its rounds pooled.
    assert lines[0].startswith("found  0 on the pod: gateway   60.0 ms, mean   60.0 (n=2)")
    assert "round robin   50.0 ms, mean   50.0 (n=4)" in lines[0]
    assert lines[0].endswith("gap +10.0 ms")
    # Only the gateway sent a request to a pod that had one: no gap to state.
    assert lines[1].startswith("found  1 on the pod: gateway   90.0 ms, mean   90.0 (n=1)")
    assert "round robin      -" in lines[1]
    assert "gap" not in lines[1]


def test_a_runs_phases_print_as_p50_and_mean_without_the_total() -> None:
    served = [RequestPhases("POST", 200, "10.0.0.1:8000", {"to_pod": t, "headers_out": 0.001, "total": 1.0})
              for t in (0.004, 0.005, 0.009)]  # fmt: skip
    assert phase_lines("gateway", served) == [
        "gateway      phases p50/mean ms: to_pod 5.00/6.00, headers_out 1.00/1.00"
    ]
    assert phase_lines("round-robin", []) == ["round-robin  phases: none logged"]


def page(e2e: float, ttft: float, itl: float, answers: int) -> str:
    """A pod's /metrics page with the three histograms vLLM names, as sums and counts."""
    lines = []
    for name, total, count in (("e2e_request_latency_seconds", e2e, answers),
                               ("time_to_first_token_seconds", ttft, answers),
                               ("inter_token_latency_seconds", itl, answers * 31)):  # fmt: skip
        lines += [f"# TYPE vllm:{name} histogram",
                  f'vllm:{name}_bucket{{model_name="m",le="+Inf"}} {count}',
                  f'vllm:{name}_count{{model_name="m"}} {count}',
                  f'vllm:{name}_sum{{model_name="m"}} {total}']  # fmt: skip
    return "\n".join(lines) + "\n"


def test_the_pods_own_view_of_a_run_is_their_histograms_difference_summed_over_pods() -> None:
    before = pod_totals([page(1.0, 0.1, 0.8, 1), page(0.0, 0.0, 0.0, 0)])
    # Over the run: four answers, 3.2 s end to end, 0.4 s to first tokens (slot waits included),
    # 2.76 s of modelled inter-token delays: 10 ms a request the pods took beyond their model.
    after = pod_totals([page(3.0, 0.3, 2.4, 3), page(1.2, 0.2, 1.16, 2)])
    line = pods_line("gateway", before, after)
    assert line.startswith("gateway      pods: TTFT mean 100.0 ms from arrival")
    assert "decode lag 10.00 ms/request over 4 answers" in line
    assert pods_line("round-robin", after, after) == "round-robin  pods: no answer ended"


def test_answers_cut_before_their_first_token_leave_the_ttft_mean_alone_and_no_decode_lag() -> None:
    before = pod_totals([page(0.0, 0.0, 0.0, 0)])
    after = pod_totals([page(1.0, 0.2, 0.6, 2)])
    after["vllm:e2e_request_latency_seconds"] = (1.5, 3.0)  # a third answer, cut before its first token
    line = pods_line("gateway", before, after)
    assert "TTFT mean 100.0 ms from arrival" in line
    assert line.endswith("1 of 3 answers cut short, no decode lag")
