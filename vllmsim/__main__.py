"""``python -m vllmsim``: serve until SIGINT or SIGTERM.

Once listening it prints one line, ``vllmsim <pod-name> serving <model,...> at http://HOST:PORT``,
so a parent that passed ``--port 0`` learns the port.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from vllmsim.config import SimConfig, parse_args
from vllmsim.server import Simulator


async def serve(config: SimConfig) -> None:
    sim = Simulator(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sim.start()
    served = ",".join([*config.models, *config.loras])
    print(f"vllmsim {sim.pod_name} serving {served} at {sim.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main() -> None:
    config = parse_args()
    try:
        asyncio.run(serve(config))
    except OSError as exc:  # e.g. the port is taken
        print(f"vllmsim: cannot serve on {config.host}:{config.port}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
