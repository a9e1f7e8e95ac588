"""What the scheduler is asked (LLMRequest) and what it answers (SchedulingResult)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from epp.datastore import Endpoint

# Per-request scratch space shared by the plugins of one scheduling cycle, keyed by plugin name
# (e.g. the prefix-cache scorer keeps the prompt's block hashes there for its post-pick hook).
CycleState = dict[str, object]


@dataclass(slots=True, frozen=True)
class LLMRequest:
    """One inference request, as the scheduler sees it."""

    request_id: str
    # The model the client asked for (a base model or a LoRA adapter id).
    model: str
    # Text used for prefix-cache affinity (the prompt, or the chat messages flattened).
    prompt: str = ""
    # Request headers, names lower-cased.
    headers: Mapping[str, str] = field(default_factory=dict)
    # The proxy's subset hint: only these ``ip:port`` may be picked; None means no restriction.
    subset: frozenset[str] | None = None
    # The request body's size in bytes (what a queue holds for it).
    body_size: int = 0
    # Whether the answer will carry ``usage`` (not streamed, or streamed with
    # ``stream_options.include_usage``): the pod's ``cached_tokens`` can then be read from it.
    usage_reported: bool = True
    # The answer is streamed (server-sent events), and the most tokens it may have (None: not given).
    streamed: bool = False
    max_tokens: int | None = None


@dataclass(slots=True)
class SchedulingResult:
    """The pick for one request."""

    # The chosen endpoint, or None when no candidate serves the model or every one was filtered out.
    endpoint: Endpoint | None
    # Ranked picks (``endpoint`` first); more than one only with a picker's ``maxNumOfEndpoints`` > 1.
    endpoints: tuple[Endpoint, ...] = ()
    # ``{address: {scorer name: weighted score}}`` for every endpoint that reached scoring.
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    # The scheduling profile whose pick this is.
    profile: str = ""
    # When ``endpoint`` is None: the stage that left no candidate — "model" (none serves the model),
    # "subset" (none is in the subset hint) or the name of the filter plugin that removed the rest.
    rejected_by: str | None = None
    # The cycle's scratch space, kept only while a plugin learns from the answer's cached tokens
    # (``framework.CacheFeedback``): it holds the predicted hits to settle.
    cycle: CycleState | None = None
