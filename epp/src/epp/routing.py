"""The two routing modes, and how each splits the served models into InferencePools (one EPP each).

Built once, for the stacks (``components.platform``) and the one box (``onebox.box``):

- ``per-model-pools``: each pool holds its own models; the front door (the BBR) sets the base-model
  header from the body and each pool's route matches it exactly (``Pool.by_model``);
- ``unified-pool``: one pool over every model server; its route takes every request and its EPP
  picks by model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar, get_args

RoutingMode = Literal["per-model-pools", "unified-pool"]
ROUTING_MODES: Final[tuple[str, ...]] = get_args(RoutingMode)

Model = TypeVar("Model")


@dataclass(frozen=True, slots=True)
class Pool(Generic[Model]):
    """One InferencePool: its name and models, and whether its route matches the base-model header."""

    name: str
    models: tuple[Model, ...]
    by_model: bool
    """True: only requests whose base-model header names one of ``models`` (per-model-pools);
    False: every request (unified-pool)."""


def split_into_pools(
    mode: RoutingMode, models: Sequence[Model], *, pool_of: Callable[[Model], str], unified: str
) -> list[Pool[Model]]:
    """The pools of ``mode``, in the models' order: per model pool, ``pool_of(model)`` groups the
    models (a pool per distinct name); unified, one pool named ``unified`` holds them all."""
    if mode not in ROUTING_MODES:
        raise ValueError(f"unknown routing mode {mode!r}; modes: {', '.join(ROUTING_MODES)}")
    if mode == "unified-pool":
        return [Pool(unified, tuple(models), by_model=False)]
    grouped: dict[str, list[Model]] = {}
    for model in models:
        grouped.setdefault(pool_of(model), []).append(model)
    return [Pool(name, tuple(members), by_model=True) for name, members in grouped.items()]
