"""The key list file behind a ``KeyStore``, re-read when it changes.

Kubernetes updates a Secret volume by writing the new files into a fresh directory and swapping a
symlink (``api-keys.yaml -> ..data/api-keys.yaml``, ``..data -> ..2024_01_01_...``), so the file is
watched through the path: ``stat`` follows the links, and a new target is a new inode. The file is
polled (every 0.5 s by default, so a revoked key is refused within a second); reading and parsing
happen in a worker thread, the swap on the event loop.

A list that cannot be read or parsed keeps the last good one and says so in the log (the error
names the entry, never a key): no key is let in or locked out by a half-written update.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path

from epp.auth.keys import ApiKeyEntry, ApiKeyError, parse_api_keys
from epp.auth.store import KeyStore

_log = logging.getLogger("epp.auth")

DEFAULT_POLL_INTERVAL = 0.5

Signature = tuple[int, int, int, int]


def _signature(path: Path) -> Signature | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


def read_api_keys(path: Path, served_models: Collection[str] | None = None) -> tuple[ApiKeyEntry, ...]:
    """The key list in ``path``, checked; ``ApiKeyError`` naming each bad entry (never a key), or
    ``OSError`` when the file cannot be read."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        # The decoder's message quotes a byte of the file: say only what is wrong.
        raise ApiKeyError(["apiKeys: the file is not UTF-8 text"]) from None
    return parse_api_keys(text, served_models)


class KeyFile:
    """Loads ``path`` into ``store`` now (raising ``ApiKeyError`` or ``OSError``) and on each change."""

    def __init__(
        self,
        path: Path,
        store: KeyStore,
        *,
        served_models: Collection[str] | None = None,
        interval: float = DEFAULT_POLL_INTERVAL,
        on_reload: Callable[[bool], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"the poll interval must be positive, got {interval}")
        self.path = path
        self.store = store
        self.interval = interval
        self._served = served_models
        self._on_reload = on_reload
        self._signature = _signature(path)
        store.replace(self._read())

    def _read(self) -> tuple[ApiKeyEntry, ...]:
        return read_api_keys(self.path, self._served)

    def changed(self) -> bool:
        return _signature(self.path) != self._signature

    async def reload(self) -> bool:
        """Re-read the file; True when the new list is in use."""
        # Taken before reading: a change during the read is seen (and read) at the next poll.
        signature = _signature(self.path)
        self._signature = signature
        try:
            if signature is None:
                raise FileNotFoundError(f"{self.path} is missing")
            entries = await asyncio.to_thread(self._read)
        except (ApiKeyError, OSError) as error:
            _log.error(
                "cannot reload the API keys; keeping the last good list",
                extra={"path": str(self.path), "error": str(error), "keys": len(self.store)},
            )
            if self._on_reload is not None:
                self._on_reload(False)
            return False
        self.store.replace(entries)
        _log.info("API keys reloaded", extra={"path": str(self.path), "keys": len(self.store)})
        if self._on_reload is not None:
            self._on_reload(True)
        return True

    async def watch(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            if self.changed():
                await self.reload()
