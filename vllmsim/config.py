"""The simulator's configuration (a pydantic model) and its command line, ``python -m vllmsim``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Literal

from epp.validation import describe
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class SimConfig(BaseModel):
    """One simulated vLLM server: what it serves, how fast it is, and how it misbehaves.

    Latency defaults follow a published simulator profile of an 8B model on an H100.
    Every simulated delay (prefill, inter-token) is multiplied by ``time_scale``; 0 answers at once.
    ``startup_delay`` is real seconds and is not scaled: it exercises readiness handling.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    models: list[str] = Field(min_length=1, description="served base model names")
    loras: dict[str, str] = Field(default_factory=dict, description="LoRA adapter name -> base model")
    pod_name: str | None = Field(default=None, description="x-inference-pod; default host:port")

    max_num_seqs: int = Field(default=16, ge=1)
    itl_ms: float = Field(default=12.0, ge=0)
    itl_sd_ms: float = Field(default=2.0, ge=0)
    prefill_overhead_ms: float = Field(default=30.0, ge=0)
    per_token_us: float = Field(default=250.0, ge=0)
    time_factor_under_load: float = Field(default=2.0, ge=1.0)
    kv_cache_blocks: int = Field(default=4096, ge=1)
    block_size: int = Field(default=16, ge=1)
    chars_per_token: int = Field(
        default=4, ge=1, description="the prefix cache hashes blocks of block_size x this many characters"
    )
    max_model_len: int | None = Field(
        default=None, ge=1, description="prompt + output token limit; default: min(32768, KV capacity)"
    )

    enable_prompt_tokens_details: bool = Field(
        default=False, description="usage.prompt_tokens_details.cached_tokens in answers, as vLLM's flag"
    )

    time_scale: float = Field(default=1.0, ge=0)
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    failure_kind: Literal[429, 503] = 503
    startup_delay: float = Field(default=0.0, ge=0)
    seed: int | None = None

    @model_validator(mode="after")
    def _check_names(self) -> SimConfig:
        for name in self.models:
            if not name.strip():
                raise ValueError("a --model name is empty")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"--model names repeat: {self.models}")
        for adapter, base in self.loras.items():
            if not adapter.strip():
                raise ValueError("a --lora adapter name is empty")
            if adapter in self.models:
                raise ValueError(f"LoRA adapter {adapter!r} has the same name as a served model")
            if base not in self.models:
                raise ValueError(
                    f"LoRA adapter {adapter!r} names base model {base!r}, which is not served "
                    f"(served: {', '.join(self.models)})"
                )
        if self.max_model_len is not None and self.max_model_len > self.kv_capacity_tokens:
            raise ValueError(
                f"max_model_len {self.max_model_len} exceeds the KV cache capacity of "
                f"{self.kv_capacity_tokens} tokens ({self.kv_cache_blocks} blocks of {self.block_size})"
            )
        return self

    @property
    def kv_capacity_tokens(self) -> int:
        return self.kv_cache_blocks * self.block_size

    @property
    def context_limit(self) -> int:
        """Largest prompt + output length one request may ask for."""
        if self.max_model_len is not None:
            return self.max_model_len
        return min(32768, self.kv_capacity_tokens)

    def base_of(self, model: str) -> str | None:
        """The base model serving ``model`` (itself, or a LoRA adapter's parent); None if not served."""
        if model in self.models:
            return model
        return self.loras.get(model)


class PodLayout(BaseModel):
    """How many simulated pods one process serves, and on which ports.

    Each pod is a whole simulated server (its own listener, engine, ``/metrics``, ``/v1/models`` and
    ``x-inference-pod``) sharing only the process and its configuration: a pool of 100 pods costs
    one Python process, not 100. With several pods, pod ``i`` is named ``<pod_name>-<i>`` and listens
    on ``ports[i]`` when given, else on ``base_port + i`` (``base_port`` 0: each picks a free port).
    ``first`` shifts the names (``<pod_name>-<first + i>``), for a pool split over several processes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pods: int = Field(default=1, ge=1, le=1024)
    first: int = Field(default=0, ge=0, description="the first pod's index in its name")
    base_port: int = Field(default=0, ge=0, le=65535)
    ports: list[int] | None = Field(default=None, description="one port per pod (a restart's old ports)")

    @model_validator(mode="after")
    def _check_ports(self) -> PodLayout:
        if self.ports is not None:
            if len(self.ports) != self.pods:
                raise ValueError(f"--ports lists {len(self.ports)} ports for {self.pods} pods")
            if any(not 0 <= port <= 65535 for port in self.ports):
                raise ValueError(f"--ports has a port outside 0..65535: {self.ports}")
        elif self.base_port and self.base_port + self.pods - 1 > 65535:
            raise ValueError(f"--base-port {self.base_port} + {self.pods} pods runs past port 65535")
        return self

    def port_of(self, index: int) -> int:
        """The port pod ``index`` asks for (0: any free port)."""
        if self.ports is not None:
            return self.ports[index]
        return self.base_port + index if self.base_port else 0


def _lora_pair(text: str) -> tuple[str, str]:
    adapter, sep, base = text.partition("=")
    if not sep or not adapter or not base:
        raise argparse.ArgumentTypeError(f"expected ADAPTER=BASE, got {text!r}")
    return adapter, base


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vllmsim",
        description="An OpenAI-compatible vLLM simulator: queueing, prefix cache, latency, vLLM metrics.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--model", dest="models", action="append", required=True, metavar="NAME",
                        help="served model name; repeat to serve several")
    parser.add_argument("--lora", dest="loras", action="append", type=_lora_pair, default=[],
                        metavar="ADAPTER=BASE", help="LoRA adapter served on top of BASE; repeatable")
    parser.add_argument("--pod-name", help="value of x-inference-pod (default: host:port)")
    parser.add_argument("--max-num-seqs", type=int, default=16, help="concurrent running requests")
    parser.add_argument("--itl-ms", type=float, default=12.0, help="mean inter-token latency")
    parser.add_argument("--itl-sd-ms", type=float, default=2.0, help="inter-token latency std deviation")
    parser.add_argument("--prefill-overhead-ms", type=float, default=30.0)
    parser.add_argument("--per-token-us", type=float, default=250.0, help="prefill time per uncached token")
    parser.add_argument("--time-factor-under-load", type=float, default=2.0,
                        help="latency multiplier when max-num-seqs requests run (linear from 1)")
    parser.add_argument("--kv-cache-blocks", type=int, default=4096, help="KV cache capacity in blocks")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="prompt + output token limit (default: min(32768, KV capacity))")
    parser.add_argument("--enable-prompt-tokens-details", action=argparse.BooleanOptionalAction,
                        default=False, help="report usage.prompt_tokens_details.cached_tokens (as vLLM)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiplies every simulated delay; 0 answers instantly")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="probability of an injected error")
    parser.add_argument("--failure-kind", type=int, choices=(429, 503), default=503)
    parser.add_argument("--startup-delay", type=float, default=0.0,
                        help="real seconds during which every route, /health included, answers 503")
    parser.add_argument("--seed", type=int, default=None, help="seed for jitter and failure injection")
    parser.add_argument("--pods", type=int, default=1,
                        help="simulated pods served by this one process, each on its own port "
                             "(names <pod-name>-0..; seeds seed+i)")
    parser.add_argument("--first-pod", type=int, default=0,
                        help="with --pods: the first pod's index (pods <pod-name>-FIRST..)")
    parser.add_argument("--base-port", type=int, default=0,
                        help="with --pods: pod i listens on BASE+i (0: each picks a free port)")
    parser.add_argument("--ports", type=_port_list, default=None, metavar="P0,P1,...",
                        help="with --pods: the port of each pod (instead of --base-port)")
    return parser


def _port_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ports, got {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> SimConfig:
    """Parse the command line into a SimConfig; exits with a usage error naming the bad value."""
    return parse_command(argv)[0]


def parse_command(argv: Sequence[str] | None = None) -> tuple[SimConfig, PodLayout]:
    """The server's configuration and how many pods serve it on which ports (``--pods``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pods > 1 and args.port:
        parser.error("--port names one pod's port; with --pods give --base-port or --ports")
    try:
        layout = PodLayout(
            pods=args.pods, first=args.first_pod, base_port=args.base_port or args.port, ports=args.ports
        )
    except ValidationError as exc:
        parser.error(describe(exc))
    loras: dict[str, str] = {}
    for adapter, base in args.loras:
        if adapter in loras:
            parser.error(f"--lora {adapter} is given twice")
        loras[adapter] = base
    try:
        config = SimConfig(
            host=args.host,
            port=args.port,
            models=args.models,
            loras=loras,
            pod_name=args.pod_name,
            max_num_seqs=args.max_num_seqs,
            itl_ms=args.itl_ms,
            itl_sd_ms=args.itl_sd_ms,
            prefill_overhead_ms=args.prefill_overhead_ms,
            per_token_us=args.per_token_us,
            time_factor_under_load=args.time_factor_under_load,
            kv_cache_blocks=args.kv_cache_blocks,
            block_size=args.block_size,
            max_model_len=args.max_model_len,
            enable_prompt_tokens_details=args.enable_prompt_tokens_details,
            time_scale=args.time_scale,
            failure_rate=args.failure_rate,
            failure_kind=args.failure_kind,
            startup_delay=args.startup_delay,
            seed=args.seed,
        )
    except ValidationError as exc:
        parser.error(describe(exc))
    return config, layout
