"""The API key list: who may call the gateway, for which models, how often.

The same parser reads the Pulumi secret ``gke-llm-gateway:apiKeys`` (at preview, before any resource
is registered), the one box's ``--api-keys FILE`` and the file the front door mounts from its
Kubernetes Secret. YAML or JSON, a list of entries::

    - name: team-a                    # the tenant: in logs and metrics, never the key
      key: sk-...                     # or  sha256: <64 hex>  (only the hash is kept in memory)
      models: [google/gemma-2b-it]    # optional: the served names this key may use (default: all)
      requestsPerMinute: 120          # optional

Errors name the entry and field (``apiKeys[2].models[0]: ...``) and never quote a key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from epp.validation import problems

MIN_KEY_LENGTH = 32
# A tenant name is a metric label value and a log field: short, plain, no spaces.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ApiKeyError(ValueError):
    """A key list that cannot be used; ``errors`` holds one ``path: problem`` line per defect."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = tuple(errors)
        super().__init__("invalid API keys:\n  " + "\n  ".join(self.errors))


class ApiKeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True)

    name: str
    key: SecretStr | None = None
    sha256: str | None = None
    models: tuple[str, ...] | None = Field(None, min_length=1)
    requests_per_minute: int | None = Field(None, alias="requestsPerMinute", gt=0)
    # The flow-control priority of this key's requests (higher first; may be negative); None: 0.
    priority: StrictInt | None = Field(None, ge=-1000, le=1000)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not is_key_name(value):
            raise ValueError(
                "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value

    @field_validator("key")
    @classmethod
    def _long_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            text = value.get_secret_value()
            if len(text) < MIN_KEY_LENGTH:
                raise ValueError(f"is shorter than {MIN_KEY_LENGTH} characters")
            if text != text.strip() or any(c.isspace() for c in text):
                raise ValueError("contains white space")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.fullmatch(value):
            raise ValueError("must be 64 lower-case hexadecimal characters (a SHA-256 digest)")
        return value

    @field_validator("models")
    @classmethod
    def _distinct_models(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            for i, model in enumerate(value):
                if not model:
                    raise ValueError(f"[{i}] is empty")
                if model in value[:i]:
                    raise ValueError(f"[{i}] repeats {model!r}")
        return value

    @model_validator(mode="after")
    def _key_or_digest(self) -> ApiKeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("needs exactly one of 'key' or 'sha256'")
        return self

    @property
    def digest(self) -> bytes:
        """SHA-256 of the key: all the front door keeps in memory."""
        if self.sha256 is not None:
            return bytes.fromhex(self.sha256)
        assert self.key is not None
        return hash_key(self.key.get_secret_value())

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def is_key_name(text: str) -> bool:
    """Whether ``text`` is a valid entry name (a tenant's name)."""
    return _NAME.fullmatch(text) is not None


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _load(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        # The YAML error quotes the text around the problem, which may be a key: never repeat it.
        raise ApiKeyError([f"{where}: not valid YAML or JSON{at}"]) from None


def parse_api_keys(
    raw: str | object, served_models: Collection[str] | None = None, *, where: str = "apiKeys"
) -> tuple[ApiKeyEntry, ...]:
    """Entries from YAML/JSON text (or already-loaded data), every defect reported at once.

    With ``served_models``, a model an entry names must be one of them. Strict: any defect raises
    ``ApiKeyError`` (what ``pulumi preview`` and the one box's start-up check use).
    """
    data = _load(raw, where) if isinstance(raw, str) else raw
    if not isinstance(data, list) or not data:
        raise ApiKeyError([f"{where}: must be a non-empty list of key entries"])
    entries, errors = _check_entries(data, served_models, where)
    if errors:
        raise ApiKeyError(errors)
    return entries


def parse_api_keys_partially(
    raw: str, served_models: Collection[str] | None = None, *, where: str = "apiKeys"
) -> tuple[tuple[ApiKeyEntry, ...], tuple[str, ...]]:
    """The valid entries of a key list and one ``path: problem`` line per bad entry (never a key).

    What a running front door reloads: a bad entry is dropped (its key refused) while every other
    entry takes effect, so removing a key always takes effect. Text that is no list at all gives no
    entries; an empty list gives none and no error (the caller decides what an empty list means).
    A later entry repeating an earlier one's name or key is dropped.
    """
    try:
        data = _load(raw, where)
    except ApiKeyError as error:
        return (), error.errors
    if data is None or data == []:
        return (), ()
    if not isinstance(data, list):
        return (), (f"{where}: must be a list of key entries",)
    entries, errors = _check_entries(data, served_models, where)
    return entries, tuple(errors)


def _check_entries(
    data: list[Any], served_models: Collection[str] | None, where: str
) -> tuple[tuple[ApiKeyEntry, ...], list[str]]:
    """The entries without a defect, and one line per defect (each entry's own first, then clashes
    between entries and models not served)."""
    errors: list[str] = []
    later: list[str] = []
    valid: list[ApiKeyEntry] = []
    names: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    for index, item in enumerate(data):
        try:
            entry = ApiKeyEntry.model_validate(item)
        except ValidationError as error:
            errors += [f"{p.path(f'{where}[{index}]')}: {p.message}" for p in problems(error)]
            continue
        defects: list[str] = []
        if entry.name in names:
            first = names[entry.name]
            defects.append(f"{where}[{index}].name: {entry.name!r} is already used by {where}[{first}]")
        digest = entry.digest
        if digest in digests:
            defects.append(f"{where}[{index}]: the same key as {where}[{digests[digest]}]")
        if served_models is not None:
            for m, model in enumerate(entry.models or ()):
                if model not in served_models:
                    served = ", ".join(sorted(served_models)) or "none"
                    defects.append(
                        f"{where}[{index}].models[{m}]: {model!r} is not served (served: {served})"
                    )
        names.setdefault(entry.name, index)
        digests.setdefault(digest, index)
        if defects:
            later.extend(defects)
        else:
            valid.append(entry)
    return tuple(valid), errors + later
