"""An OpenAI-compatible vLLM simulator for the one-box data plane, the benchmark and tests.

``python -m vllmsim --model NAME ...`` serves /v1/models, /v1/completions, /v1/chat/completions,
/health and /metrics (vLLM metric names) with vLLM-like queueing, prefix caching and latency.
In-process::

    async with vllmsim.running(vllmsim.SimConfig(models=["google/gemma-2b-it"], time_scale=0)) as sim:
        ...  # sim.url, sim.port, sim.engine, sim.metrics

Modules: ``config`` (SimConfig, CLI), ``engine`` (slots, queue, KV blocks, latency model),
``metrics`` (Prometheus), ``protocol`` (OpenAI wire format), ``state`` (what the routes read),
``api`` (routes), ``server`` (lifecycle).
"""

from vllmsim.config import SimConfig, parse_args
from vllmsim.engine import RequestRecord
from vllmsim.server import Simulator, running

__all__ = ["RequestRecord", "SimConfig", "Simulator", "parse_args", "running"]
