"""One translation of pydantic's validation errors: each problem's field path and its plain message."""

from __future__ import annotations

import pytest
from epp.validation import describe, field_path, problems
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    port: int = Field(ge=1)

    @field_validator("name")
    @classmethod
    def _lowercase(cls, value: str) -> str:
        if value != value.lower():
            raise ValueError("must be lowercase")
        return value


class _File(BaseModel):
    entries: list[_Entry]


def _error(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as raised:
        _File.model_validate(data)
    return raised.value


def test_a_path_writes_indices_in_brackets_and_fields_after_dots() -> None:
    assert field_path(("entries", 1, "port")) == "entries[1].port"
    assert field_path(("entries", 1, "port"), "platform") == "platform.entries[1].port"
    assert field_path((), "platform") == "platform"
    assert field_path(()) == ""


def test_each_problem_keeps_its_place_its_kind_and_a_validators_own_words() -> None:
    found = problems(_error({"entries": [{"name": "A", "port": 0, "extra": 1}]}))

    assert [(p.path(), p.kind) for p in found] == [
        ("entries[0].name", "value_error"),
        ("entries[0].port", "greater_than_equal"),
        ("entries[0].extra", "extra_forbidden"),
    ]
    assert found[0].message == "must be lowercase"
    assert found[0].pydantic_message == "Value error, must be lowercase"
    assert isinstance(found[0].cause, ValueError)
    assert found[1].cause is None


def test_describe_joins_every_problem_under_a_root() -> None:
    error = _error({"entries": [{"name": "a"}, {"name": "B", "port": 2}]})

    assert describe(error, "file") == (
        "file.entries[0].port: Field required; file.entries[1].name: must be lowercase"
    )
    assert describe(_error([]), separator="\n") == "Input should be a valid dictionary or instance of _File"
