"""``python -m onebox run``: the data plane on 127.0.0.1 until interrupted.

(The demo, which also needs the benchmark, is ``python -m bench.demo``.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from onebox.box import MODES, GatewayNotServing, OneBox
from onebox.children import LOG_LEVELS
from onebox.envoy.limits import GatewayTimeouts
from onebox.prometheus import BoxPrometheus, PrometheusMissing
from onebox.supervisor import ChildDied
from onebox.topology import PRESETS, Topology, TopologyError, load_preset, load_topology


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m onebox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the data plane and keep it up until SIGINT/SIGTERM")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=PRESETS)
    source.add_argument("--topology", type=Path, help="topology YAML file")
    run.add_argument("--mode", choices=MODES, default="per-model-pools")
    run.add_argument("--port", type=int, help="gateway port (default: a free one)")
    run.add_argument("--time-scale", type=float, default=1.0, help="simulator delay multiplier (0 = instant)")
    run.add_argument("--round-robin", action="store_true", help="also a round-robin Envoy over the same pods")
    run.add_argument("--epp-profile", help="EPP scheduling profile (default: the EPP's default)")
    run.add_argument("--epp-replicas", type=int, default=1,
                     help="EPPs per pool, behind one health-checked ext_proc cluster (default 1)")
    run.add_argument("--bbr-replicas", type=int, default=1,
                     help="BBR replicas, behind one health-checked ext_proc cluster (default 1)")
    run.add_argument("--log-dir", type=Path, help="write each child's output to DIR/<name>.log")
    run.add_argument("--log-level", default="warning", choices=LOG_LEVELS,
                     help="log level of the EPPs, BBR (info at least) and Envoy")
    run.add_argument("--startup-timeout", type=float, default=60.0)
    run.add_argument("--fail-fast", action="store_true",
                     help="stop everything when any child dies (default: restart it with backoff)")
    run.add_argument("--api-keys", type=Path, metavar="FILE",
                     help="close the gateway: the API key list (YAML/JSON, 'key:' or 'sha256:' entries, as "
                     "for the GKE stack), checked at start and re-read on change by every BBR replica; "
                     "without it the box is open")
    run.add_argument("--upstream-idle-timeout", type=float, default=GatewayTimeouts().upstream_idle,
                     help="seconds a pod may send nothing before its request ends with a 504 "
                     "(default %(default)s)")
    run.add_argument("--monitoring", action="store_true",
                     help="also run Prometheus (from PATH) scraping every child and evaluating the alert "
                     "rules; prints its URL")
    return parser


def _box(topology: Topology, args: argparse.Namespace) -> OneBox:
    return OneBox(
        topology,
        mode=args.mode,
        port=args.port,
        time_scale=args.time_scale,
        round_robin=args.round_robin,
        epp_profile=args.epp_profile,
        epp_replicas=args.epp_replicas,
        bbr_replicas=args.bbr_replicas,
        log_dir=args.log_dir,
        log_level=args.log_level,
        startup_timeout=args.startup_timeout,
        fail_fast=args.fail_fast,
        timeouts=GatewayTimeouts(upstream_idle=args.upstream_idle_timeout),
        api_keys=args.api_keys,
        monitoring=BoxPrometheus() if args.monitoring else None,
    )


async def _run(args: argparse.Namespace) -> int:
    try:
        topology = load_preset(args.preset) if args.preset else load_topology(args.topology)
    except TopologyError as exc:
        print(f"onebox: {exc}", file=sys.stderr)
        return 2
    try:
        box = _box(topology, args)
    except (ValueError, PrometheusMissing) as exc:
        print(f"onebox: {exc}", file=sys.stderr)
        return 2

    logging.basicConfig(level=logging.INFO, format="onebox: %(message)s", stream=sys.stderr)
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)

    starting = asyncio.create_task(box.start())
    interrupt = asyncio.create_task(interrupted.wait())
    await asyncio.wait([starting, interrupt], return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # interrupted while starting: start() stops what it started
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, ChildDied, GatewayNotServing):
            await starting
        return 130
    try:
        starting.result()
    except (ChildDied, GatewayNotServing, FileNotFoundError) as exc:
        interrupt.cancel()
        print(f"onebox: failed to start: {exc}", file=sys.stderr)
        return 1

    for pod in box.pods:
        print(f"pod {pod.name} {pod.model} {pod.url}", file=sys.stderr)
    if args.round_robin:
        print(f"round-robin {box.round_robin_url}", flush=True)
    if box.keys is not None:
        print(f"api keys: {len(box.keys)} from {box.keys.path} (send 'Authorization: Bearer <key>')",
              file=sys.stderr)
    if box.monitoring is not None:
        print(f"prometheus {box.monitoring.url}", flush=True)
    print(f"gateway {box.gateway_url}", flush=True)

    died = asyncio.create_task(box.wait_for_failure())
    await asyncio.wait([interrupt, died], return_when=asyncio.FIRST_COMPLETED)
    await box.stop()
    for task in (interrupt, died):
        task.cancel()
    if box.failure is not None:
        print(f"onebox: {box.failure}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return asyncio.run(_run(args))
