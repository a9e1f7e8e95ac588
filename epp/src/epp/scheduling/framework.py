"""The plugin interfaces a scheduling profile is assembled from.

A profile runs its filters in order, then its scorers (each returns one score per endpoint, clamped
to [0, 1] and weighted by the profile), then its picker. A profile handler decides which profiles run
and which result is primary. Plugins may additionally implement ``PostPick`` (learn from the pick,
e.g. the prefix-cache index) and ``EndpointStateful`` (drop state for an endpoint that left the pool).

A plugin class says everything the config needs once, as class attributes: ``type_name`` (the
upstream name), ``aliases`` (older names), ``Parameters`` (the pydantic model of its ``parameters``)
and ``configure`` (the instance from validated parameters); ``epp.scheduling.registry.register``
files it under those names.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from pydantic import BaseModel

from epp.datastore import Endpoint
from epp.scheduling.params import NoParameters
from epp.scheduling.types import CycleState, LLMRequest


@dataclass(slots=True)
class Handle:
    """What plugin factories get besides their parameters: shared services such as the RNG, and
    facts of the deployment: ``replicas``, how many EPP replicas serve the pool (each routes, and
    sees, only its share of the requests; 1: this one sees them all)."""

    rng: random.Random = field(default_factory=random.Random)
    replicas: int = 1


class Plugin(ABC):
    """A named instance of a plugin type."""

    # The upstream type name a config's ``type`` field gives; ``aliases`` are other accepted names.
    type_name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    # The model of the plugin's ``parameters`` (validated at start-up, before ``configure``).
    Parameters: ClassVar[type[BaseModel]] = NoParameters

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def configure(cls, name: str, parameters: Any, handle: Handle) -> Self:
        """The plugin ``name`` from its validated ``parameters`` (an instance of ``Parameters``).

        Plugins that take parameters or shared services override this; a ValueError becomes a
        ConfigError naming the plugin.
        """
        return cls(name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Filter(Plugin):
    @abstractmethod
    def filter(self, state: CycleState, request: LLMRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        """The endpoints that remain eligible, in their original order."""


class Scorer(Plugin):
    @abstractmethod
    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        """One score per endpoint, aligned with ``endpoints``; the profile clamps them to [0, 1]."""


class Picker(Plugin):
    @abstractmethod
    def pick(self, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> list[Endpoint]:
        """The chosen endpoints, best first (never empty when ``endpoints`` is not)."""


class PostPick(ABC):
    """Implemented by plugins that learn from the endpoint their profile picked."""

    @abstractmethod
    def post_pick(self, state: CycleState, request: LLMRequest, endpoint: Endpoint) -> None: ...


class CacheFeedback:
    """Implemented by plugins that guess which endpoints hold a prompt's prefix in their KV cache (the
    learned prefix index). While ``learns_from_cached_tokens`` is set (the EPP's
    ``--cached-tokens-feedback-rate``), their post-pick hook keeps what it predicted for the picked
    endpoint in the cycle state (``prefix_index.keep_prediction``), for the answer's
    ``cached_tokens`` to confirm or correct."""

    learns_from_cached_tokens: bool = False


@dataclass(frozen=True, slots=True)
class SharedPick:
    """One pick of a plugin whose learned state the pool's EPP replicas share (``epp.peers``): the
    plugin's name, the request's model, its prefix's home key (``prefix_affinity.home_key``; None for
    none), the pod picked and the prompt's chained block hashes (``prefix_index.block_hashes``, in
    the sender's hash space: they mean the same to a peer only under the same ``PYTHONHASHSEED``)."""

    plugin: str
    model: str
    key: int | None
    address: str
    hashes: Sequence[int]


class PeerShared(ABC):
    """Implemented by plugins that learn from picks and let the other EPP replicas of the pool learn
    from this one's (``epp.peers``). While ``share`` is set, each post-pick hands the pick to it; a
    peer's pick comes back through :meth:`apply_shared`."""

    share: Callable[[SharedPick], None] | None = None

    @abstractmethod
    def apply_shared(self, pick: SharedPick, hashes_agree: bool) -> None:
        """Learn from a peer's ``pick`` as from this replica's own (its hashes only where
        ``hashes_agree``: the peer hashes prompts as this process does)."""


class EndpointStateful(ABC):
    """Implemented by plugins that keep per-endpoint state."""

    @abstractmethod
    def forget(self, address: str) -> None:
        """Drop everything known about the endpoint at ``address`` (it left the pool)."""


@dataclass(slots=True)
class ProfileOutcome:
    """What one profile run produced."""

    picks: list[Endpoint]
    scores: dict[str, dict[str, float]]
    rejected_by: str | None = None


class ProfileHandler(Plugin):
    """Chooses which profiles run for a request, and which profile's pick is the answer."""

    @abstractmethod
    def pick_profiles(
        self, request: LLMRequest, profiles: Sequence[str], done: Mapping[str, ProfileOutcome]
    ) -> Sequence[str]:
        """Profiles to run next, given those already run (``done``); empty when finished."""

    @abstractmethod
    def primary(self, request: LLMRequest, done: Mapping[str, ProfileOutcome]) -> str:
        """The profile whose pick the request is sent to."""

    @classmethod
    def validate_profiles(cls, profiles: Sequence[str], parameters: Any = None) -> None:
        """Raise ValueError when this handler, with these validated ``parameters``, cannot work with
        these profiles (checked when the config is compiled, before any plugin is built)."""
