"""Micro-benchmark of ``Scheduler.schedule()``: CPU microseconds per call on a 4- and a 100-endpoint pool.

Runs the shipped ``default`` profile (prefix affinity) and a four-scorer config, each with repeated
and one-off prompts, in this checkout; with ``--baseline REF`` it runs the same measurement on the
``epp`` package of git revision ``REF`` too (in a child process, its source first on ``sys.path``)
and prints both side by side, each the best of ``--rounds`` alternating processes of ``--repeat``
rounds. Times are the process's CPU time, which other processes disturb less than wall time. Figures
only, for a person to read: a shared machine still makes them noisy, so compare within one run::

    python -m bench.schedule --baseline main
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "google/gemma-2b-it"
FOUR_SCORERS = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: queue-scorer}
- {type: kv-cache-utilization-scorer}
- {type: prefix-cache-scorer}
- {type: active-request-scorer}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: active-request-scorer}
  - {pluginRef: max-score-picker}
"""
CASES = ("default", "four-scorers")
POOLS = (4, 100)


def measure(calls: int, repeat: int) -> dict[str, float]:
    """``{case/pool: best microseconds per schedule() call}`` for the ``epp`` package on sys.path."""
    from epp.datastore import Endpoint, Metrics
    from epp.scheduling import LLMRequest, Scheduler, load_profile, parse_config

    configs = {"default": load_profile("default"), "four-scorers": parse_config(FOUR_SCORERS)}
    now = time.monotonic() + 3600  # fresh metrics throughout
    shared = "You are a careful assistant. Answer in one short paragraph. " * 20
    prompts = [shared + f"Question {i}: what is {i} squared?" for i in range(64)]
    prompts += [f"one-off prompt {i} " * 30 for i in range(64)]
    results: dict[str, float] = {}
    for case in CASES:
        for size in POOLS:
            rng = random.Random(1)
            pods = [
                Endpoint(
                    name=f"pod-{i}",
                    ip=f"10.0.{i // 256}.{i % 256}",
                    port=8000,
                    models=frozenset({MODEL}),
                    metrics=Metrics(waiting=rng.randrange(8), running=rng.randrange(8), updated_at=now),
                    models_known=True,
                )
                for i in range(size)
            ]
            scheduler = Scheduler.from_config(configs[case], rng=random.Random(0))
            requests = [LLMRequest(f"r{i}", MODEL, prompts[i % len(prompts)]) for i in range(calls)]
            for r in requests[: calls // 10]:  # warm the index
                scheduler.schedule(r, pods)
            best = float("inf")
            for _ in range(repeat):
                started = time.process_time()
                for r in requests:
                    scheduler.schedule(r, pods)
                best = min(best, (time.process_time() - started) / calls)
            results[f"{case}/{size}"] = best * 1e6
    return results


def _child(source: Path, calls: int, repeat: int) -> dict[str, float]:
    """``measure`` in a child process whose ``epp`` package is the one under ``source``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), str(ROOT)])}
    child = subprocess.run(
        [sys.executable, "-m", "bench.schedule", "--json", f"--calls={calls}", f"--repeat={repeat}"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    figures: dict[str, float] = json.loads(child.stdout)
    return figures


def compare(ref: str, calls: int, repeat: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Best figures of this checkout and of revision ``ref``, measured in alternating child
    processes (so a change in the machine's load hits both alike)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "epp/src"], check=True, capture_output=True
    ).stdout
    current: dict[str, float] = {}
    base: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
        for _ in range(rounds):
            for source, best in ((ROOT / "epp" / "src", current), (Path(folder, "epp", "src"), base)):
                for key, value in _child(source, calls, repeat).items():
                    best[key] = min(value, best.get(key, value))
    return current, base


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.schedule", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REF", help="also measure the epp package of this git revision")
    parser.add_argument("--calls", type=int, default=2000, help="schedule() calls per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per process; the best one counts")
    parser.add_argument("--rounds", type=int, default=4, help="processes per revision, alternating")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args.calls, args.repeat)))
        return
    if args.baseline:
        current, base = compare(args.baseline, args.calls, args.repeat, args.rounds)
    else:
        current, base = measure(args.calls, args.repeat), {}
    header = f"{'case/endpoints':<20}{'this µs':>10}"
    if base:
        header += f"{args.baseline + ' µs':>14}{'change':>9}"
    print(header)
    for key, value in current.items():
        line = f"{key:<20}{value:>10.1f}"
        if key in base:
            line += f"{base[key]:>14.1f}{(value / base[key] - 1) * 100:>+8.0f}%"
        print(line)


if __name__ == "__main__":
    main()
