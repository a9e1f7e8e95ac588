"""What the API key check costs the front door, side by side with an open one in the same run.

``python -m tests.epp.auth.bench_key_check [--requests N] [--rounds R] [--keys K]``

1. In process: the BBR's work per request (``screen`` + ``decide`` + ``finish`` on a fresh exchange),
   open and with K keys, interleaved; CPU microseconds per request and the ratio.
2. Through a real Envoy: one instant backend (``bench.overhead``'s) and one EPP, and two front doors
   side by side, each a ``bbr`` process behind its own Envoy: one open, one with K keys (the one used
   may use the model and has a limit it never reaches), and a second open one, whose difference from
   the first is the noise floor of the comparison on this machine. Requests rotate between them in
   blocks, at concurrency 1, with the same bytes (an ``Authorization`` header included). Printed: the
   BBR's CPU per request, Envoy's CPU per request, the p50 latency of each side and the differences.

The target (issue 7): the check costs at most 5% of the front door's CPU per request and at most
+0.1 ms p50. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import yaml
from epp.auth.check import KeyCheck
from epp.auth.keys import parse_api_keys
from epp.auth.store import KeyStore
from epp.extproc import BodyBasedRouter, Exchange
from epp.telemetry import Telemetry

from bench.overhead import MODEL, _backend, _cpu_seconds, _terminate, completion_body, run_load
from onebox.envoy import EnvoyProcess, PoolRoute, gateway_config
from onebox.probes import grpc_serving, until_ready

KEY = "sk-bench-0123456789abcdefghijklmnopqrstuvwxyz"


def key_list(count: int) -> list[dict[str, object]]:
    """``count`` keys; the last is the one the benchmark sends (may use MODEL, a limit never reached)."""
    entries: list[dict[str, object]] = [
        {"name": f"tenant-{i}", "key": f"sk-other-{i:06d}-0123456789abcdefghijklmnop"}
        for i in range(count - 1)
    ]
    entries.append({"name": "bench", "key": KEY, "models": [MODEL], "requestsPerMinute": 10**9})
    return entries


# --- 1. in process ---------------------------------------------------------------------------------


def _per_request(router: BodyBasedRouter, headers: dict[str, str], body: bytes, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        exchange = Exchange()
        exchange.headers = headers
        router.screen(exchange)
        exchange.body = body
        router.decide(exchange)
        router.finish(exchange)
    return (time.process_time() - started) / count


def in_process(keys: int, count: int, rounds: int) -> tuple[float, float]:
    store = KeyStore(parse_api_keys(key_list(keys)))
    open_door = BodyBasedRouter(Telemetry("bbr"), served_models=[MODEL])
    closed = BodyBasedRouter(Telemetry("bbr"), served_models=[MODEL], keys=KeyCheck(store))
    headers = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json",
               "authorization": f"Bearer {KEY}", "x-request-id": "bench"}
    body = completion_body(1024)
    open_times, closed_times = [], []
    _per_request(open_door, headers, body, count // 10)
    _per_request(closed, headers, body, count // 10)
    for _ in range(rounds):
        open_times.append(_per_request(open_door, headers, body, count))
        closed_times.append(_per_request(closed, headers, body, count))
    return statistics.median(open_times), statistics.median(closed_times)


# --- 2. through Envoy ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def server(command: str, *args: str) -> AsyncIterator[tuple[int, int]]:
    """The ``epp`` or ``bbr`` command: yields its gRPC port and process id once it is ready."""
    grpc_port, health_port = _free_port(), _free_port()
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name(command)), "--bind", "127.0.0.1", "--grpc-port", str(grpc_port),
        "--health-port", str(health_port), "--metrics-port", "0", "--log-level", "warning", *args,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        await until_ready(grpc_serving(f"127.0.0.1:{health_port}"), within=30, interval=0.1)
        yield grpc_port, process.pid
    finally:
        await _terminate(process)


def _request(port: int, body: bytes) -> bytes:
    return (
        f"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {KEY}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


class Side:
    def __init__(self, name: str, bbr_pid: int, envoy: EnvoyProcess) -> None:
        self.name = name
        self.bbr_pid = bbr_pid
        self.envoy = envoy
        self.request = _request(envoy.port, completion_body(1024))
        self.latencies: list[float] = []
        self.bbr_cpu = 0.0
        self.envoy_cpu = 0.0

    async def block(self, count: int) -> None:
        bbr, envoy = _cpu_seconds(self.bbr_pid), _cpu_seconds(self.envoy.pid)
        latencies, _ = await run_load(self.envoy.port, self.request, 1, count)
        self.bbr_cpu += _cpu_seconds(self.bbr_pid) - bbr
        self.envoy_cpu += _cpu_seconds(self.envoy.pid) - envoy
        self.latencies.extend(latencies)


async def through_envoy(keys: int, requests: int, blocks: int) -> tuple[Side, ...]:
    """Three front doors side by side: open, with keys, and open again (the second open one shows how
    far two identical sides differ on this machine: the noise floor of the comparison)."""
    with tempfile.TemporaryDirectory(prefix="bench-keys-") as directory:
        keys_file = Path(directory) / "api-keys.yaml"
        keys_file.write_text(yaml.safe_dump(key_list(keys)))
        async with (
            _backend() as backend_port,
            server("epp", "--endpoints", f"127.0.0.1:{backend_port}") as (epp_port, _),
            server("bbr", "--served-models", MODEL) as (open_port, open_pid),
            server(
                "bbr", "--served-models", MODEL, "--api-keys-file", str(keys_file)
            ) as (closed_port, closed_pid),
            server("bbr", "--served-models", MODEL) as (again_port, again_pid),
        ):
            pool = [PoolRoute(name="bench", models=(MODEL,), epp=f"127.0.0.1:{epp_port}")]
            async with (
                EnvoyProcess(gateway_config(bbr=f"127.0.0.1:{open_port}", pools=pool)) as open_envoy,
                EnvoyProcess(gateway_config(bbr=f"127.0.0.1:{closed_port}", pools=pool)) as closed_envoy,
                EnvoyProcess(gateway_config(bbr=f"127.0.0.1:{again_port}", pools=pool)) as again_envoy,
            ):
                sides = (Side("open", open_pid, open_envoy), Side("keys", closed_pid, closed_envoy),
                         Side("open2", again_pid, again_envoy))
                for side in sides:  # warm-up, not counted
                    await run_load(side.envoy.port, side.request, 1, 200)
                per_block = max(1, requests // blocks)
                for index in range(blocks):
                    # Rotate which side goes first, so none always runs on a warmer machine.
                    shift = index % len(sides)
                    for side in sides[shift:] + sides[:shift]:
                        await side.block(per_block)
                return sides


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} us"


def report(keys: int, in_proc: tuple[float, float], sides: Sequence[Side]) -> None:
    open_cpu, closed_cpu = in_proc
    print(f"API key check, {keys} keys in the list")
    print("1. in process, the BBR's work per request (screen + decide + finish), CPU")
    print(f"   open {_us(open_cpu)}   keys {_us(closed_cpu)}   added {_us(closed_cpu - open_cpu)}   "
          f"ratio {closed_cpu / open_cpu:.3f}")
    count = len(sides[0].latencies)
    print(f"2. through Envoy, {count} requests a side at concurrency 1, alternating blocks")
    print(f"   {'':5} {'BBR CPU/req':>12} {'Envoy CPU/req':>14} {'front door CPU/req':>19} {'p50':>10}")
    rows = []
    for side in sides:
        n = len(side.latencies)
        bbr, envoy = side.bbr_cpu / n, side.envoy_cpu / n
        p50 = statistics.median(side.latencies)
        rows.append((bbr, bbr + envoy, p50))
        print(f"   {side.name:5} {_us(bbr):>12} {_us(envoy):>14} {_us(bbr + envoy):>19} {p50 * 1e3:8.3f} ms")
    (bbr_o, door_o, p50_o) = rows[0]
    for side, (bbr, door, p50) in zip(sides[1:], rows[1:], strict=True):
        print(f"   {side.name}/open: BBR CPU {bbr / bbr_o:.3f}, front door CPU (BBR + Envoy) "
              f"{door / door_o:.3f}, p50 {'+' if p50 >= p50_o else ''}{(p50 - p50_o) * 1e3:.3f} ms")
    print("   target: front door CPU ratio <= 1.05 and p50 <= +0.100 ms")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4000, help="requests a side through Envoy")
    parser.add_argument("--blocks", type=int, default=20, help="alternating blocks they are sent in")
    parser.add_argument("--keys", type=int, default=100, help="keys in the list")
    parser.add_argument("--iterations", type=int, default=20000, help="in-process requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="in-process rounds a side")
    args = parser.parse_args(argv)
    in_proc = in_process(args.keys, args.iterations, args.rounds)
    sides = asyncio.run(through_envoy(args.keys, args.requests, args.blocks))
    report(args.keys, in_proc, sides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
