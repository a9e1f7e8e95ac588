"""``python -m bench.compare --baseline REV``: this tree's EPP against another revision's, side by side.

What a change to the request path costs, measured the way ``bench.overhead`` measures the EPP, on the
same machine in the same run: one backend, two EPPs (this tree's, and ``REV``'s source checked out
into a temporary git worktree and run with the same interpreter and packages), each behind its own
Envoy in the unified-pool configuration. Rounds alternate the two sides (A B B A ...), so whatever
else the machine does falls on both alike. Printed per side, medians over the rounds: the EPP's CPU
per 1 KB request, Envoy's, their ratio, the sustained rate at concurrency 8, and the p50 at
concurrency 1; then new ÷ old. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

from epp.settings import EppSettings

from bench.overhead import (
    PythonLoad,
    WrkLoad,
    _backend,
    _cpu_seconds,
    _sustained,
)
from onebox.children import ext_proc_server
from onebox.envoy import EnvoyProcess, unified_gateway_config
from onebox.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]
# The baseline's ``epp`` command as that revision ships it: through ``epp.launch`` (its gRPC settings)
# where it has one.
_BOOT = (
    "import sys\n"
    "try:\n    from epp.launch import epp_main\n"
    "except ModuleNotFoundError as missing:\n"
    "    if missing.name != 'epp.launch':\n        raise\n"
    "    from epp.cli import epp_main\n"
    "sys.exit(epp_main(sys.argv[1:]))"
)


@contextlib.contextmanager
def _checkout(revision: str) -> Iterator[Path]:
    """``revision``'s tree in a temporary worktree (removed afterwards)."""
    folder = Path(tempfile.mkdtemp(prefix="epp-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(folder), revision],
                   check=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def _epps(
    backend_port: int, baseline_tree: Path, answer_check_rate: float | None
) -> AsyncIterator[dict[str, tuple[int, int]]]:
    """Both EPPs against the backend: side name -> (gRPC port, pid)."""
    common = {"endpoints": f"127.0.0.1:{backend_port}", "profile": "default"}
    settings = EppSettings.model_validate(common)
    extra = {} if answer_check_rate is None else {"answer_check_rate": answer_check_rate}
    new = ext_proc_server("epp", "127.0.0.1", "info", EppSettings.model_validate({**common, **extra}))
    baseline = ext_proc_server("epp", "127.0.0.1", "info", settings)
    old = dataclasses.replace(
        baseline, name="epp-baseline",
        argv=lambda ports: [sys.executable, "-c", _BOOT, *baseline.argv(ports)[1:]],
        env={**(new.env or {}), "PYTHONPATH": str(baseline_tree / "epp" / "src")},
    )
    supervisor = Supervisor()
    try:
        sides: dict[str, tuple[int, int]] = {}
        for side, spec in (("new", new), ("old", old)):
            child = await supervisor.launch(spec)
            ports = await supervisor.wait_ready(child, within=30)
            sides[side] = (ports["grpc"], child.pid)
        yield sides
    finally:
        await supervisor.stop()


async def compare(revision: str, rounds: int, seconds: float, load: PythonLoad | WrkLoad,
                  answer_check_rate: float | None = None) -> None:
    with _checkout(revision) as tree:
        async with _backend() as backend_port, _epps(backend_port, tree, answer_check_rate) as epps:
            destination = f"127.0.0.1:{backend_port}"
            async with contextlib.AsyncExitStack() as stack:
                envoys = {
                    side: await stack.enter_async_context(
                        EnvoyProcess(unified_gateway_config(epp=f"127.0.0.1:{port}"))
                    )
                    for side, (port, _) in epps.items()
                }
                for envoy in envoys.values():  # warm-up
                    await _sustained(load, envoy.port, destination, 1.0)
                figures: dict[str, dict[str, list[float]]] = {
                    side: {"epp_cpu": [], "envoy_cpu": [], "rate": [], "p50": []} for side in epps
                }
                order = ["new", "old"]
                for index in range(rounds):
                    for side in order if index % 2 == 0 else reversed(order):
                        envoy, (_, pid) = envoys[side], epps[side]
                        before = _cpu_seconds(pid), _cpu_seconds(envoy.pid)
                        busy = await _sustained(load, envoy.port, destination, seconds)
                        after = _cpu_seconds(pid), _cpu_seconds(envoy.pid)
                        single = await _sustained(load, envoy.port, destination, seconds / 2, concurrency=1)
                        figures[side]["epp_cpu"].append((after[0] - before[0]) / busy.requests)
                        figures[side]["envoy_cpu"].append((after[1] - before[1]) / busy.requests)
                        figures[side]["rate"].append(busy.rate)
                        figures[side]["p50"].append(single.p50)
    _print(revision, rounds, seconds, load, figures)
    if answer_check_rate is not None:
        print(f"(this tree's EPP ran with --answer-check-rate {answer_check_rate})")


def _print(revision: str, rounds: int, seconds: float, load: PythonLoad | WrkLoad,
           figures: dict[str, dict[str, list[float]]]) -> None:
    median = {side: {k: statistics.median(v) for k, v in f.items()} for side, f in figures.items()}
    print(f"EPP, this tree (new) vs {revision} (old): {rounds} alternating rounds of {seconds:.0f} s, "
          f"1 KB bodies, load: {load.name}; machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    header = ("", "EPP CPU/req", "Envoy CPU/req", "EPP/Envoy", "req/s c=8", "p50 c=1")
    print("{:6} {:>12} {:>14} {:>10} {:>10} {:>9}".format(*header))
    for side in ("new", "old"):
        m = median[side]
        print(f"{side:6} {m['epp_cpu'] * 1e3:>10.3f}ms {m['envoy_cpu'] * 1e3:>12.3f}ms "
              f"{m['epp_cpu'] / m['envoy_cpu']:>10.2f} {m['rate']:>10.0f} {m['p50'] * 1e3:>7.2f}ms")
    new, old = median["new"], median["old"]
    print(f"new/old: EPP CPU per request {new['epp_cpu'] / old['epp_cpu']:.3f}, "
          f"EPP/Envoy {(new['epp_cpu'] / new['envoy_cpu']) / (old['epp_cpu'] / old['envoy_cpu']):.3f}, "
          f"rate {new['rate'] / old['rate']:.3f}, p50 {new['p50'] / old['p50']:.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="the git revision to compare with (e.g. c377a40)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per side and round")
    parser.add_argument("--load", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--answer-check-rate", type=float, default=None,
                        help="this tree's EPP's --answer-check-rate (default: its own default)")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    load: PythonLoad | WrkLoad = (
        WrkLoad(wrk, args.seconds) if wrk is not None and args.load != "python" else PythonLoad()
    )
    asyncio.run(compare(args.baseline, args.rounds, args.seconds, load, args.answer_check_rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
