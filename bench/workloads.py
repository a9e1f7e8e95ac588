"""Seeded workload generators: what each request asks for, decided before any is sent.

A "token" here is one three-letter word plus a space (about four characters, the usual
characters-per-token estimate), so ``--system-prompt-len 100`` means roughly 100 tokens.
The same seed always yields the same requests, which is what lets ``--baseline`` replay the
exact workload against a second target.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, Field, model_validator

# Short words so that one word plus its separating space is about one token.
_WORDS = (
    "the",
    "cat",
    "sat",
    "mat",
    "dog",
    "ran",
    "far",
    "big",
    "red",
    "sun",
    "sky",
    "sea",
    "air",
    "one",
    "two",
    "six",
    "ten",
    "new",
    "old",
    "hot",
    "low",
    "top",
    "end",
    "map",
    "key",
    "box",
    "cup",
    "pen",
    "ink",
    "art",
    "law",
    "tax",
    "job",
    "war",
    "age",
    "aim",
    "act",
    "add",
    "ask",
    "bed",
    "bit",
    "bus",
    "car",
    "day",
    "eye",
    "fan",
    "fix",
    "fly",
    "fun",
    "gas",
    "gun",
    "hat",
    "ice",
    "kid",
    "leg",
    "lot",
    "man",
    "mix",
    "net",
    "oil",
    "owl",
    "pay",
    "pie",
    "pin",
    "pot",
    "raw",
    "row",
    "run",
    "saw",
    "set",
    "sit",
    "tea",
    "tie",
    "toy",
    "use",
    "van",
    "way",
    "web",
    "win",
    "yes",
    "zip",
)


class Workload(StrEnum):
    RANDOM_MIXED = "random-mixed"
    SHARED_PREFIX = "shared-prefix"
    LONG_PROMPT = "long-prompt"


class WorkloadConfig(BaseModel):
    """Everything that decides the requests' content (not how fast they are sent)."""

    workload: Workload = Workload.RANDOM_MIXED
    models: list[str] = Field(min_length=1)
    requests: int = Field(gt=0)
    max_tokens: int = Field(default=64, gt=0)
    seed: int = 0
    # shared-prefix: groups x prompts per group, each prompt = the group's system prompt + a question.
    groups: int = Field(default=4, gt=0)
    prompts_per_group: int = Field(default=8, gt=0)
    system_prompt_len: int = Field(default=256, gt=0)
    question_len: int = Field(default=32, gt=0)
    output_len: int | None = Field(default=None, gt=0)
    # Put before every prompt (the system prompt, or the only message): two runs with different
    # salts send the same requests, but neither finds the other's prompts in a pod's prefix cache
    # (a side-by-side run on the same pods). Every workload honours it.
    prefix_salt: str = ""
    # long-prompt: tokens per prompt.
    prompt_len: int = Field(default=2048, gt=0)

    @model_validator(mode="after")
    def _distinct_models(self) -> WorkloadConfig:
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct, got {self.models}")
        if any(not m.strip() for m in self.models):
            raise ValueError(f"model names must not be empty, got {self.models}")
        return self


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request to send: its position in the workload, the model, the chat messages, max_tokens."""

    index: int
    model: str
    messages: tuple[tuple[str, str], ...]  # (role, content)
    max_tokens: int
    group: int | None = None

    def body(self, stream: bool) -> dict[str, object]:
        """The OpenAI chat-completions request body."""
        body: dict[str, object] = {
            "model": self.model,
            "messages": [{"role": role, "content": content} for role, content in self.messages],
            "max_tokens": self.max_tokens,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    @property
    def prompt_chars(self) -> int:
        return sum(len(content) for _, content in self.messages)


def _text(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(tokens))


def generate(config: WorkloadConfig) -> list[RequestSpec]:
    """The requests of ``config``, in sending order; identical for identical configs."""
    rng = random.Random(config.seed)
    match config.workload:
        case Workload.RANDOM_MIXED:
            return _random_mixed(config, rng)
        case Workload.SHARED_PREFIX:
            return _shared_prefix(config, rng)
        case Workload.LONG_PROMPT:
            return _long_prompt(config, rng)


def _random_mixed(config: WorkloadConfig, rng: random.Random) -> list[RequestSpec]:
    specs = []
    for i in range(config.requests):
        model = rng.choice(config.models)
        question = config.prefix_salt + _text(rng, rng.randint(8, 64))
        specs.append(RequestSpec(i, model, (("user", question),), config.max_tokens))
    return specs


def _shared_prefix(config: WorkloadConfig, rng: random.Random) -> list[RequestSpec]:
    # Each group has its own system prompt and is pinned to one model (round robin over the
    # models), so every prompt of a group can hit the prefix cache of that model's pods.
    prompts: list[RequestSpec] = []
    output_len = config.output_len or config.max_tokens
    for group in range(config.groups):
        model = config.models[group % len(config.models)]
        system = f"{config.prefix_salt}group {group}: " + _text(rng, config.system_prompt_len)
        for _ in range(config.prompts_per_group):
            question = _text(rng, config.question_len)
            prompts.append(RequestSpec(0, model, (("system", system), ("user", question)), output_len, group))
    rng.shuffle(prompts)
    chosen = (prompts[n % len(prompts)] for n in range(config.requests))
    return [RequestSpec(i, p.model, p.messages, p.max_tokens, p.group) for i, p in enumerate(chosen)]


def _long_prompt(config: WorkloadConfig, rng: random.Random) -> list[RequestSpec]:
    return [
        RequestSpec(
            i,
            rng.choice(config.models),
            (("user", config.prefix_salt + _text(rng, config.prompt_len)),),
            config.max_tokens,
        )
        for i in range(config.requests)
    ]


def bursty_arrivals(
    rate: float, burst_rate: float, burst_start: float, burst_seconds: float, count: int, seed: int
) -> list[float]:
    """Poisson arrivals at ``rate``, at ``burst_rate`` from ``burst_start`` s for ``burst_seconds`` s."""
    if rate <= 0 or burst_rate <= 0:
        raise ValueError(f"rates must be > 0 requests/s, got {rate} and {burst_rate}")
    rng = random.Random(f"bursty-{seed}")
    offsets, t = [], 0.0
    for _ in range(count):
        offsets.append(t)
        bursting = burst_start <= t < burst_start + burst_seconds
        t += rng.expovariate(burst_rate if bursting else rate)
    return offsets


def poisson_arrivals(rate: float, count: int, seed: int) -> list[float]:
    """Send offsets (seconds from the start) of ``count`` requests arriving as a Poisson process."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    rng = random.Random(f"arrivals-{seed}")
    offsets, t = [], 0.0
    for _ in range(count):
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets
