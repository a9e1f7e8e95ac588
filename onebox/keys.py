"""API keys in the one box (``python -m onebox run --api-keys FILE``).

The file is the list the deployed front door reads (``epp.auth.keys``: ``key:`` or ``sha256:``
entries), checked when the box is made with that same parser against the topology's served names,
so a bad entry stops the box before anything starts, named (``apiKeys[2].models[0]: ...``) and never
quoted. Every BBR replica is then given the file itself (``--api-keys-file``, re-read on change, so
a key is added or revoked without a restart) and ``--limit-share`` = the number of BBR replicas.

The box's own readiness check asks each model through the gateway, so it needs a key that may use
that model: it takes one from a ``key:`` entry (one without ``requestsPerMinute`` first, since the
check spends requests of the key's limit; else the one with the highest limit). A ``sha256:`` entry
holds no key, so for a model only such entries may use, the box cannot ask that model through the
gateway: it says so in its log and checks instead that the gateway refuses a request without a key
(401), which shows the front door is up and closed; the pods themselves were already checked
directly.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from epp.auth.keys import ApiKeyEntry, ApiKeyError
from epp.auth.watch import read_api_keys
from pydantic import SecretStr


class KeysFileError(ValueError):
    """The ``--api-keys`` file cannot be read or holds a bad entry (the message names it)."""


@dataclass(frozen=True, slots=True)
class BoxKeys:
    """The checked key list behind ``--api-keys FILE``."""

    path: Path
    entries: tuple[ApiKeyEntry, ...]

    def __len__(self) -> int:
        return len(self.entries)

    def probe_key(self, model: str) -> SecretStr | None:
        """A key the box may use for its own request to ``model``; None if the file holds none."""
        usable = [e for e in self.entries if e.key is not None and e.allows(model)]
        if not usable:
            return None
        best = max(usable, key=lambda e: float("inf") if e.requests_per_minute is None
                   else e.requests_per_minute)  # fmt: skip
        return best.key


def load_keys(path: Path, served_models: Collection[str]) -> BoxKeys:
    """Read and check ``path``; raises ``KeysFileError`` naming the file and each bad entry."""
    try:
        entries = read_api_keys(path, served_models)
    except ApiKeyError as error:
        raise KeysFileError(f"--api-keys {path}: {error}") from None
    except OSError as error:
        raise KeysFileError(f"--api-keys {path}: {error.strerror or error}") from None
    return BoxKeys(path.resolve(), entries)
