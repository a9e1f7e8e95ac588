"""``python -m vllmsim``: serve until SIGINT or SIGTERM.

Once listening it prints one line per pod, ``vllmsim <pod-name> serving <model,...> at
http://HOST:PORT``, so a parent that passed ``--port 0`` learns the port. With ``--pods N`` (N
simulated pods in this one process) a last line follows, ``vllmsim pods serving at ports P0,P1,...``,
once every pod listens.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from vllmsim.config import PodLayout, SimConfig, parse_command
from vllmsim.server import Simulator


def pod_configs(config: SimConfig, layout: PodLayout) -> list[SimConfig]:
    """The configuration of each pod of ``layout``: its port, name (``<pod_name>-<first + i>``) and seed."""
    if layout.pods == 1:
        return [config.model_copy(update={"port": layout.port_of(0)})]
    return [
        config.model_copy(
            update={
                "port": layout.port_of(i),
                "pod_name": f"{config.pod_name}-{layout.first + i}" if config.pod_name else None,
                "seed": None if config.seed is None else config.seed + layout.first + i,
            }
        )
        for i in range(layout.pods)
    ]


async def serve(config: SimConfig, layout: PodLayout | None = None) -> None:
    layout = layout or PodLayout(base_port=config.port)
    sims = [Simulator(pod) for pod in pod_configs(config, layout)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    served = ",".join([*config.models, *config.loras])
    try:
        for sim in sims:
            await sim.start()
            print(f"vllmsim {sim.pod_name} serving {served} at {sim.url}", flush=True)
        if layout.pods > 1:
            print(f"vllmsim pods serving at ports {','.join(str(s.port) for s in sims)}", flush=True)
        await stop.wait()
    finally:
        await asyncio.gather(*(sim.stop() for sim in sims))


def main() -> None:
    config, layout = parse_command()
    try:
        asyncio.run(serve(config, layout))
    except OSError as exc:  # e.g. the port is taken
        print(f"vllmsim: cannot serve on {config.host}:{config.port}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
