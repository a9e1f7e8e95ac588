"""One benchmark: generate the workload, run it against the target (and the baseline), compare.

This is the in-process API the CLI and ``onebox demo`` share.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from bench.client import RunResult, run
from bench.report import Report
from bench.stats import compare, summarize
from bench.workloads import WorkloadConfig, generate, poisson_arrivals


class LoadConfig(BaseModel):
    """How requests are sent: a fixed number in flight, or Poisson arrivals at a rate."""

    concurrency: int | None = Field(default=None, gt=0)
    rate: float | None = Field(default=None, gt=0)
    stream: bool = False
    retries: int = Field(default=0, ge=0)
    timeout: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _one_pacing(self) -> LoadConfig:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency (requests in flight) or rate (requests/s)")
        return self

    def describe(self) -> str:
        pacing = f"concurrency {self.concurrency}" if self.concurrency else f"Poisson {self.rate}/s"
        return f"{pacing}, {'streaming' if self.stream else 'non-streaming'}, retries {self.retries}"


async def run_workload(
    url: str,
    workload: WorkloadConfig,
    load: LoadConfig,
    *,
    label: str = "target",
    progress: bool = True,
    api_key: str | None = None,
) -> RunResult:
    """Send ``workload`` to ``url`` as ``load`` says; the same configs always send the same requests.

    ``api_key``: sent as ``Authorization: Bearer`` on every request (kept out of every report).
    """
    specs = generate(workload)
    arrivals = poisson_arrivals(load.rate, len(specs), workload.seed) if load.rate is not None else None
    return await run(
        url,
        specs,
        concurrency=load.concurrency,
        arrivals=arrivals,
        stream=load.stream,
        retries=load.retries,
        request_timeout=load.timeout,
        label=label,
        progress=progress,
        api_key=api_key,
    )


async def benchmark(
    url: str,
    workload: WorkloadConfig,
    load: LoadConfig,
    *,
    baseline: str | None = None,
    label: str = "target",
    baseline_label: str = "baseline",
    progress: bool = True,
    settings: dict[str, Any] | None = None,
    api_key: str | None = None,
) -> Report:
    """Run against ``url``, then the identical workload against ``baseline`` if given, and compare.

    ``api_key`` goes to both: the same requests, headers included (a server without keys ignores it).
    """
    runs = [await run_workload(url, workload, load, label=label, progress=progress, api_key=api_key)]
    comparisons = []
    if baseline is not None:
        runs.append(
            await run_workload(
                baseline, workload, load, label=baseline_label, progress=progress, api_key=api_key
            )
        )
        target, base = summarize(runs[0]), summarize(runs[1])
        comparisons.append(compare(target.overall, base.overall, label, baseline_label))
    return Report(
        title=f"Benchmark of {url}",
        settings=settings
        or {
            "url": url,
            "baseline": baseline,
            **workload.model_dump(mode="json"),
            **load.model_dump(mode="json"),
            "api_key": "sent" if api_key else "none",
        },
        runs=runs,
        comparisons=comparisons,
        notes=[f"{workload.workload} workload, {workload.requests} requests, {load.describe()}"],
    )
