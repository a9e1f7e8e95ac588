"""``python -m bench``: benchmark any OpenAI-compatible URL (a one-box gateway or a deployed one).

``python -m bench matrix`` runs the workload matrix on the one boxes it starts (``bench.matrix``);
``python -m bench scale`` the EPP at 100 pods against the upstream picker's sizing (``bench.scale``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from epp.validation import describe
from pydantic import ValidationError

from bench.benchmark import LoadConfig, benchmark
from bench.report import format_comparison, format_pods, format_table, write_html, write_json
from bench.workloads import Workload, WorkloadConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Send a seeded workload to an OpenAI-compatible URL; report success, routing accuracy "
        "(the response's model is the requested one), attempts per request, throughput and latency.",
    )
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--models", required=True, help="comma-separated served model names")
    p.add_argument("--requests", type=int, default=100, help="number of requests (default 100)")
    pacing = p.add_mutually_exclusive_group(required=True)
    pacing.add_argument("--concurrency", type=int, help="requests in flight")
    pacing.add_argument("--rate", type=float, help="Poisson arrival rate, requests/s")
    p.add_argument(
        "--stream", action="store_true", help="stream (SSE) and measure TTFT and inter-token latency"
    )
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--workload", choices=[w.value for w in Workload], default=Workload.RANDOM_MIXED.value)
    p.add_argument("--groups", type=int, default=4, help="shared-prefix: prompt groups")
    p.add_argument("--prompts-per-group", type=int, default=8, help="shared-prefix: prompts per group")
    p.add_argument("--system-prompt-len", type=int, default=256, help="shared-prefix: system prompt tokens")
    p.add_argument("--question-len", type=int, default=32, help="shared-prefix: question tokens")
    p.add_argument(
        "--output-len", type=int, help="shared-prefix: max_tokens per request (default --max-tokens)"
    )
    p.add_argument("--prompt-len", type=int, default=2048, help="long-prompt: prompt tokens")
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        help="opt-in client-side retry (the old workaround): resend up to N times when the answer "
        "names another model or is a 404 (default 0)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds an attempt may wait for the connection or the next bytes before it fails",
    )
    p.add_argument("--baseline", help="second URL to run the same workload against (e.g. round robin)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY") or None,
        metavar="KEY",
        help="sent as 'Authorization: Bearer KEY' to the URL and the baseline (default: $OPENAI_API_KEY; "
        "none if unset); never printed",
    )
    p.add_argument("--json", type=Path, help="write the JSON report here")
    p.add_argument("--html", type=Path, help="write the HTML report (with plots) here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["matrix"]:  # python -m bench matrix: the workload matrix (bench.matrix)
        from bench.matrix import main as matrix

        return matrix(given[1:])
    if given[:1] == ["scale"]:  # python -m bench scale: the EPP at 100 pods (bench.scale)
        from bench.scale import main as scale

        return scale(given[1:])
    args = build_parser().parse_args(given)
    try:
        workload = WorkloadConfig(
            workload=Workload(args.workload),
            models=[m.strip() for m in args.models.split(",") if m.strip()],
            requests=args.requests,
            max_tokens=args.max_tokens,
            seed=args.seed,
            groups=args.groups,
            prompts_per_group=args.prompts_per_group,
            system_prompt_len=args.system_prompt_len,
            question_len=args.question_len,
            output_len=args.output_len,
            prompt_len=args.prompt_len,
        )
        load = LoadConfig(
            concurrency=args.concurrency,
            rate=args.rate,
            stream=args.stream,
            retries=args.retries,
            timeout=args.timeout,
        )
    except ValidationError as exc:
        print(f"bench: invalid arguments: {describe(exc)}", file=sys.stderr)
        return 2
    report = asyncio.run(
        benchmark(
            args.url, workload, load, baseline=args.baseline, progress=not args.no_progress,
            api_key=args.api_key,
        )
    )
    summaries = report.summaries()
    print(format_table(summaries))
    print(format_pods(summaries))
    for comparison in report.comparisons:
        print(format_comparison(comparison))
    if args.json:
        print(f"JSON report: {write_json(report, args.json)}")
    if args.html:
        print(f"HTML report: {write_html(report, args.html)}")
    return 0
