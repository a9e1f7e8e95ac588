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
    return parser


def parse_args(argv: Sequence[str] | None = None) -> SimConfig:
    """Parse the command line into a SimConfig; exits with a usage error naming the bad value."""
    parser = build_parser()
    args = parser.parse_args(argv)
    loras: dict[str, str] = {}
    for adapter, base in args.loras:
        if adapter in loras:
            parser.error(f"--lora {adapter} is given twice")
        loras[adapter] = base
    try:
        return SimConfig(
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
