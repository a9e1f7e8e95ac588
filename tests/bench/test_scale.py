"""``python -m bench scale --quick``: the scale row end to end on a small pool (a smoke test)."""

from __future__ import annotations

from bench.scale import QUICK, UPSTREAM_WORKLOAD, format_scale, run_scale


async def test_the_quick_scale_row_measures_the_epp_idle_and_under_load() -> None:
    lines: list[str] = []
    result = await run_scale(QUICK, out=lines.append)
    # Idle: the EPP scraped the pods (its own counter moved) and its CPU was read from /proc.
    assert result.idle_scrapes_per_s > 0
    assert result.idle_cores >= 0
    # Under load: requests went through Envoy and the EPP, which spent CPU on them.
    assert result.requests > 0
    assert result.epp_load_cores > 0
    assert result.cpu_per_request is not None
    assert set(result.others_cores) == {"envoy", "simulator", "load generator"}
    report = format_scale(result)
    assert UPSTREAM_WORKLOAD in report
    assert "req/s per EPP core" in report
