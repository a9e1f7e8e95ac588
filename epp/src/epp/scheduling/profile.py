"""SchedulingProfile: one filter → score → pick pipeline, assembled once from the config.

Every run starts with two implicit filters: the model filter (only endpoints serving the requested
model, as a base model or a LoRA adapter) and, when the proxy sent one, the subset hint. Then the
profile's filters in order, then ``sum(weight * clamp(score, 0, 1))`` over its scorers, then its picker.
Each endpoint's weighted score per scorer is kept only when asked (``explain``: debug logging, tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import add

from epp.datastore import Endpoint
from epp.scheduling.framework import Filter, Picker, PostPick, ProfileOutcome, Scorer
from epp.scheduling.types import CycleState, LLMRequest

MODEL_FILTER = "model"
SUBSET_FILTER = "subset"


class SchedulingProfile:
    def __init__(
        self,
        name: str,
        filters: Sequence[Filter],
        scorers: Sequence[tuple[Scorer, float]],
        picker: Picker,
    ) -> None:
        self.name = name
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        self.picker = picker
        plugins: list[object] = [*self.filters, *(s for s, _ in self.scorers), picker]
        self.post_pick = tuple(p for p in plugins if isinstance(p, PostPick))

    def run(
        self, state: CycleState, request: LLMRequest, candidates: Sequence[Endpoint], explain: bool = False
    ) -> ProfileOutcome:
        model = request.model
        endpoints = [e for e in candidates if e.serves(model)]
        if not endpoints:
            return ProfileOutcome([], {}, MODEL_FILTER)
        subset = request.subset
        if subset is not None:
            endpoints = [e for e in endpoints if e.address in subset]
            if not endpoints:
                return ProfileOutcome([], {}, SUBSET_FILTER)
        for plugin in self.filters:
            endpoints = plugin.filter(state, request, endpoints)
            if not endpoints:
                return ProfileOutcome([], {}, plugin.name)

        # Clamp to [0, 1] (NaN fails both comparisons and counts as 0), weigh, add up; one list per
        # scorer, and the per-scorer lists kept only when asked.
        totals: list[float] | None = None
        per_scorer: list[tuple[str, list[float]]] = []
        for scorer, weight in self.scorers:
            raw = scorer.score(state, request, endpoints)
            if totals is None or explain:
                weighted = [weight * (1.0 if s >= 1.0 else s if s > 0.0 else 0.0) for s in raw]
                if explain:
                    per_scorer.append((scorer.name, weighted))
                totals = weighted if totals is None else list(map(add, totals, weighted))
            else:
                pairs = zip(totals, raw)  # noqa: B905 (a keyword here costs more than the whole sum at 4 endpoints)
                totals = [t + weight * (1.0 if s >= 1.0 else s if s > 0.0 else 0.0) for t, s in pairs]
        if totals is None:
            totals = [0.0] * len(endpoints)

        picks = self.picker.pick(endpoints, totals)
        if not explain:
            return ProfileOutcome(picks, {})
        scores = {
            e.address: {name: weighted[i] for name, weighted in per_scorer} for i, e in enumerate(endpoints)
        }
        return ProfileOutcome(picks, scores)
