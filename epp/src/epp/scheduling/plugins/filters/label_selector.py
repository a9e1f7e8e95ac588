"""label-selector-filter (alias by-label-selector): keep endpoints whose labels match a selector.

Parameters are a Kubernetes label selector: ``matchLabels`` (all must be equal) and
``matchExpressions`` (``key``, ``operator`` In/NotIn/Exists/DoesNotExist, ``values``); every
requirement must hold. An empty selector keeps every endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from epp.datastore import Endpoint
from epp.scheduling.framework import Filter, Handle
from epp.scheduling.registry import register
from epp.scheduling.types import CycleState, LLMRequest

Requirement = Callable[[dict[str, str]], bool]


class LabelSelectorRequirement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value (key {self.key!r})")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values (key {self.key!r})")
        return self


class LabelSelectorParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, alias="matchExpressions")


def _requirement(expression: LabelSelectorRequirement) -> Requirement:
    key, values = expression.key, frozenset(expression.values)
    if expression.operator == "In":
        return lambda labels: labels.get(key) in values
    if expression.operator == "NotIn":
        # As in Kubernetes, an endpoint without the label satisfies NotIn.
        return lambda labels: labels.get(key) not in values
    if expression.operator == "Exists":
        return lambda labels: key in labels
    return lambda labels: key not in labels


@register
class LabelSelectorFilter(Filter):
    type_name = "label-selector-filter"
    aliases = ("by-label-selector",)
    Parameters = LabelSelectorParameters

    def __init__(self, name: str, parameters: LabelSelectorParameters) -> None:
        super().__init__(name)
        self._match_labels = tuple(parameters.match_labels.items())
        self._requirements = tuple(_requirement(e) for e in parameters.match_expressions)

    @classmethod
    def configure(cls, name: str, parameters: LabelSelectorParameters, handle: Handle) -> LabelSelectorFilter:
        return cls(name, parameters)

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self._match_labels:
            if labels.get(key) != value:
                return False
        return all(requirement(labels) for requirement in self._requirements)

    def filter(self, state: CycleState, request: LLMRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if self.matches(e.labels)]

