"""``python -m bench.demo`` (``make demo``): the gpu one box, the field's benchmark, and round robin.

The box is closed, as the deployed gateway is by default: the demo generates a random API key into a
temporary key list (``--api-keys``), shows one request without it refused (401) next to one with it
answered, and every benchmark request carries it (``Authorization: Bearer``). The key is never
printed. Then:

1. 50 random mixed-model requests through the gateway;
2. per model, 100 requests at concurrency 10 through the gateway;
3. the same mixed traffic through Envoy round-robin over the same pods (a plain Service), once
   as is and once with the old client-side retry workaround;
then the table, the ratios against round robin, and the JSON + HTML reports under ``reports/``.

With ``prometheus`` on PATH the box also runs its Prometheus (``onebox --monitoring``), and the HTML
report adds plots drawn from it over the run: per-pod load, TTFT and queue (``bench.promplots``).

It lives in ``bench`` because it uses both: the one box (``onebox``) and the benchmark; ``onebox``
itself knows nothing of ``bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

from bench.benchmark import LoadConfig, run_workload
from bench.client import RunResult
from bench.promplots import draw_all
from bench.report import Report, format_comparison, format_pods, format_table, write_html, write_json
from bench.stats import compare, summarize
from bench.workloads import WorkloadConfig
from onebox.box import MODES, GatewayNotServing, Mode, OneBox
from onebox.prometheus import BOX_SETTINGS, BoxPrometheus, PrometheusMissing
from onebox.supervisor import ChildDied
from onebox.topology import load_preset


@dataclass(frozen=True)
class DemoSettings:
    """Sized so the whole demo (startup included) stays well under two minutes on two cores."""

    mixed_requests: int = 50
    per_model_requests: int = 100
    concurrency: int = 10
    max_tokens: int = 32
    # Real-time simulated latency (the H100 8B profile: 30 ms prefill overhead, 12 ms per token):
    # a 32-token answer takes ~0.45 s, so the 350 requests at concurrency 10 take ~20 s.
    time_scale: float = 1.0
    retries: int = 3
    seed: int = 42
    tenant: str = "demo"  # the generated key's name (what logs and metrics show)

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(mixed_requests=20, per_model_requests=20, concurrency=5)


def write_demo_keys(directory: Path, tenant: str) -> tuple[Path, str]:
    """A key list with one fresh random key (43 URL-safe characters) for ``tenant``: its path and the key."""
    key = secrets.token_urlsafe(32)
    path = directory / "api-keys.yaml"
    path.write_text(yaml.safe_dump([{"name": tenant, "key": key}]))
    path.chmod(0o600)
    return path, key


async def show_the_door(url: str, model: str, key: str, out: Callable[[str], None]) -> None:
    """One request without the key (refused) and one with it (answered), as a client sees them."""
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        refused = await client.post("/v1/chat/completions", json=body)
        accepted = await client.post(
            "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        )
    error = refused.json().get("error", {})
    out(
        f"  without a key: {refused.status_code} {error.get('type')} "
        f"(WWW-Authenticate: {refused.headers.get('www-authenticate')})"
    )
    out(
        f"  with the key:  {accepted.status_code} from pod {accepted.headers.get('x-inference-pod')} "
        f"({accepted.json().get('model')})"
    )


async def run_demo(
    settings: DemoSettings,
    reports_dir: Path,
    *,
    mode: Mode = "per-model-pools",
    progress: bool = True,
    out: Callable[[str], None] = print,
) -> tuple[Report, Path, Path]:
    """Run the demo and write its reports; returns the report and the JSON and HTML paths."""
    topology = load_preset("gpu")
    models = topology.served_names
    short = {m.served_name: m.name for m in topology.models}
    stream = LoadConfig(concurrency=settings.concurrency, stream=True)
    mixed = WorkloadConfig(
        models=models, requests=settings.mixed_requests, max_tokens=settings.max_tokens, seed=settings.seed
    )
    out(
        f"demo: gpu preset ({', '.join(models)}), {mode}; simulator time-scale {settings.time_scale}, "
        f"max_tokens {settings.max_tokens}, streaming, concurrency {settings.concurrency}"
    )
    started = time.monotonic()
    monitoring = _prometheus(out)
    plots: list[str] = []
    with tempfile.TemporaryDirectory(prefix="demo-keys-") as keys_dir:
        keys_file, key = write_demo_keys(Path(keys_dir), settings.tenant)
        box = OneBox(
            topology, mode=mode, time_scale=settings.time_scale, round_robin=True, api_keys=keys_file,
            monitoring=monitoring,
        )
        async with box:
            out(
                f"gateway {box.gateway_url}  round-robin {box.round_robin_url}  "
                f"(ready in {time.monotonic() - started:.1f} s)"
            )
            up_at = time.time()
            if monitoring is not None:
                out(f"prometheus {monitoring.url}")
            for pod in box.pods:
                out(f"  pod {pod.name}: {pod.model} at {pod.url}")
            out(f"API keys on: one random key for tenant {settings.tenant!r}, sent by every request below")
            await show_the_door(box.gateway_url, models[0], key, out)
            runs = await _benchmark_runs(box, settings, models, short, mixed, stream, key, progress)
            if monitoring is not None:
                await asyncio.sleep(2.0)  # a last scrape after the last request
                plots = await draw_all(monitoring.url, BOX_SETTINGS, up_at, time.time())
    gateway, rr, rr_retries = summarize(runs[0]), summarize(runs[-2]), summarize(runs[-1])
    report = Report(
        title="One-box demo: model-aware gateway vs round robin",
        settings={
            "preset": "gpu",
            "mode": mode,
            "api_keys": f"on: one generated key ({settings.tenant}), sent by every request; not recorded",
            "models": models,
            "pods": [{"name": p.name, "model": p.model, "address": p.address} for p in box.pods],
            **asdict(settings),
        },
        runs=runs,
        plots=plots,
        comparisons=[
            compare(gateway.overall, rr.overall, "gateway", "round-robin"),
            compare(gateway.overall, rr_retries.overall, "gateway", "round-robin+retries"),
        ],
        notes=[
            f"{settings.mixed_requests} random mixed-model requests, "
            f"then {settings.per_model_requests} per model, "
            f"concurrency {settings.concurrency}, streaming, max_tokens {settings.max_tokens}",
            f"simulator time-scale {settings.time_scale} (every simulated delay multiplied by it)",
            "round-robin: Envoy round robin over the same pods, blind to models, like a Kubernetes Service",
            f"round-robin+retries: the old client workaround, "
            f"up to {settings.retries} resends on 404 / wrong model",
        ],
    )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    json_path = write_json(report, reports_dir / f"demo-{stamp}.json")
    html_path = write_html(report, reports_dir / f"demo-{stamp}.html")
    out("")
    summaries = report.summaries()
    out(format_table(summaries))
    out(format_pods(summaries))
    out("")
    for comparison in report.comparisons:
        out(format_comparison(comparison))
    out(f"\nreports: {json_path}  {html_path}")
    out(f"demo took {time.monotonic() - started:.1f} s")
    return report, json_path, html_path


def _prometheus(out: Callable[[str], None]) -> BoxPrometheus | None:
    """The box's Prometheus, or None (and a line saying how to get its plots) when not installed."""
    try:
        return BoxPrometheus()
    except PrometheusMissing as exc:
        out(f"no plots from Prometheus in the report: {exc}")
        return None


async def _benchmark_runs(
    box: OneBox,
    settings: DemoSettings,
    models: list[str],
    short: dict[str, str],
    mixed: WorkloadConfig,
    stream: LoadConfig,
    key: str,
    progress: bool,
) -> list[RunResult]:
    """The mixed traffic and each model's through the gateway, then the mixed through round robin.

    Every request carries the key; round robin goes straight to the pods, which ignore it."""
    runs: list[RunResult] = [
        await run_workload(box.gateway_url, mixed, stream, label="gateway", progress=progress, api_key=key)
    ]
    for model in models:
        per_model = WorkloadConfig(
            models=[model], requests=settings.per_model_requests, max_tokens=settings.max_tokens,
            seed=settings.seed,
        )  # fmt: skip
        runs.append(
            await run_workload(
                box.gateway_url, per_model, stream, label=f"gateway/{short[model]}", progress=progress,
                api_key=key,
            )
        )
    runs.append(
        await run_workload(
            box.round_robin_url, mixed, stream, label="round-robin", progress=progress, api_key=key
        )
    )
    retrying = stream.model_copy(update={"retries": settings.retries})
    runs.append(
        await run_workload(
            box.round_robin_url, mixed, retrying, label="round-robin+retries", progress=progress, api_key=key
        )
    )
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (CI)")
    parser.add_argument("--mode", choices=MODES, default="per-model-pools")
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    try:
        report, _, _ = asyncio.run(
            run_demo(settings, args.reports_dir, mode=args.mode, progress=not args.no_progress)
        )
    except (ChildDied, GatewayNotServing) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    gateway_runs = [summarize(run) for run in report.runs if run.label.startswith("gateway")]
    short = [s.label for s in gateway_runs if s.overall.accuracy < 1.0 or s.overall.success_rate < 1.0]
    if short:
        print(f"below the bar (100% accuracy and success through the gateway): {', '.join(short)}")
        return 1
    print("bar met: every gateway request reached a pod serving its model, with no retry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
