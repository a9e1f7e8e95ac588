"""The key list file behind a ``KeyStore``, re-read when it changes.

Kubernetes updates a Secret volume by writing the new files into a fresh directory and swapping a
symlink (``api-keys.yaml -> ..data/api-keys.yaml``, ``..data -> ..2024_01_01_...``), so the file is
read through the path. It is polled (every 0.5 s by default, so a revoked key is refused within a
second) and a change is told by its content's SHA-256, never by its metadata (a key rotated in place
with the same size and modification time is still seen); reading and parsing happen in a worker
thread, the swap on the event loop.

A removal always takes effect: a reloaded list with bad entries puts its valid entries in use and
drops the bad ones (their keys are refused), logging each by position (``apiKeys[2].key: ...``, never
a key); an empty list, a file that is no list, or a missing or unreadable file leaves no key valid
(the gateway is closed) and says so at ERROR. ``KeyListStatus.degraded`` tells the caller (the BBR
exports it as ``bbr_api_key_list_degraded``, to alert on). Only the first load, at start, is strict:
a bad file stops the BBR there, naming every defect.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from epp.auth.keys import ApiKeyEntry, ApiKeyError, parse_api_keys, parse_api_keys_partially
from epp.auth.store import KeyStore

_log = logging.getLogger("epp.auth")

DEFAULT_POLL_INTERVAL = 0.5
_NOT_UTF8 = "apiKeys: the file is not UTF-8 text"


@dataclass(frozen=True, slots=True)
class KeyListStatus:
    """The list in use after a (re)load: how many keys, and what was wrong with the file."""

    keys: int
    problems: tuple[str, ...] = ()
    missing: bool = False

    @property
    def degraded(self) -> bool:
        """Entries were dropped, or no key is valid at all (empty, unreadable or missing list)."""
        return bool(self.problems) or self.missing or self.keys == 0


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _text(content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        # The decoder's message quotes a byte of the file: say only what is wrong.
        raise ApiKeyError([_NOT_UTF8]) from None


def read_api_keys(path: Path, served_models: Collection[str] | None = None) -> tuple[ApiKeyEntry, ...]:
    """The key list in ``path``, checked strictly; ``ApiKeyError`` naming each bad entry (never a
    key), or ``OSError`` when the file cannot be read."""
    return parse_api_keys(_text(path.read_bytes()), served_models)


class KeyFile:
    """Loads ``path`` into ``store`` now (strictly: ``ApiKeyError`` or ``OSError``) and on each change."""

    def __init__(
        self,
        path: Path,
        store: KeyStore,
        *,
        served_models: Collection[str] | None = None,
        interval: float = DEFAULT_POLL_INTERVAL,
        on_reload: Callable[[KeyListStatus], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"the poll interval must be positive, got {interval}")
        self.path = path
        self.store = store
        self.interval = interval
        self._served = served_models
        self._on_reload = on_reload
        content = path.read_bytes()
        store.replace(parse_api_keys(_text(content), served_models))
        self._digest: bytes | None = hashlib.sha256(content).digest()
        self.status = KeyListStatus(len(store))

    @staticmethod
    def _digest_of(content: bytes | None) -> bytes | None:
        return None if content is None else hashlib.sha256(content).digest()

    def changed(self) -> bool:
        """Whether the file's content (or its presence) differs from the list last loaded."""
        return self._digest_of(_read(self.path)) != self._digest

    def _status(self, content: bytes | None) -> tuple[tuple[ApiKeyEntry, ...], KeyListStatus]:
        if content is None:
            return (), KeyListStatus(0, (f"apiKeys: {self.path} is missing or unreadable",), missing=True)
        try:
            entries, problems = parse_api_keys_partially(_text(content), self._served)
        except ApiKeyError as error:
            entries, problems = (), error.errors
        if not entries and not problems:
            problems = ("apiKeys: the list is empty",)
        return entries, KeyListStatus(len(entries), problems)

    async def reload(self, content: bytes | None = None) -> bool:
        """Re-read the file (or take its ``content`` just read); True when all of it is in use."""
        if content is None:
            content = await asyncio.to_thread(_read, self.path)
        entries, status = await asyncio.to_thread(self._status, content)
        self._digest = self._digest_of(content)
        self.store.replace(entries)
        self.status = status
        where = {"path": str(self.path), "keys": status.keys}
        if status.keys == 0:
            _log.error("API keys reloaded: NO KEY IS VALID, every request is refused",
                       extra={**where, "problems": list(status.problems)})
        elif status.problems:
            _log.error("API keys reloaded without the bad entries (their keys are refused)",
                       extra={**where, "problems": list(status.problems)})
        else:
            _log.info("API keys reloaded", extra=where)
        if self._on_reload is not None:
            self._on_reload(status)
        return not status.degraded

    async def watch(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            content = await asyncio.to_thread(_read, self.path)
            if self._digest_of(content) != self._digest:
                await self.reload(content)
