"""The keys the front door accepts, by SHA-256 digest: only digests are kept, never a key.

``replace`` swaps in a new key list at once (a request sees the old list or the new one, never a
mix). A key whose name and limit stay the same keeps its rate limit's state across a reload, so
editing the list does not hand every key a fresh burst.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from epp.auth.keys import ApiKeyEntry
from epp.auth.limits import DEFAULT_WINDOW, RateLimit, replica_share


class Tenant:
    """One key's owner: its name, the models it may use (None: all) and this replica's limit."""

    __slots__ = ("digest", "limit", "models", "name", "priority")

    def __init__(
        self, name: str, digest: bytes, models: frozenset[str] | None, limit: RateLimit | None,
        priority: int = 0,
    ) -> None:
        self.name = name
        self.digest = digest
        self.models = models
        self.limit = limit
        # The flow-control priority of its requests (the key entry's ``priority``).
        self.priority = priority

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def __repr__(self) -> str:  # never the digest: logs and tracebacks show the name only
        return f"Tenant({self.name!r})"


class KeyStore:
    """Digest → tenant, for one replica that enforces ``1/share`` of each key's limit."""

    def __init__(
        self, entries: Iterable[ApiKeyEntry] = (), *, share: int = 1, window: float = DEFAULT_WINDOW
    ) -> None:
        if share <= 0:
            raise ValueError(f"the limit share must be a positive replica count, got {share}")
        self.share = share
        self.window = window
        self.version = 0
        self._by_digest: dict[bytes, Tenant] = {}
        self.replace(entries)

    def __len__(self) -> int:
        return len(self._by_digest)

    @property
    def names(self) -> list[str]:
        return sorted(t.name for t in self._by_digest.values())

    def find(self, digest: bytes) -> Tenant | None:
        """The tenant whose key has this SHA-256 digest, or None.

        The dict lookup is keyed by the digest of what the client sent, so its timing can only tell
        a client about the digest of its own guess; the match is confirmed in constant time."""
        tenant = self._by_digest.get(digest)
        if tenant is None or not hmac.compare_digest(tenant.digest, digest):
            return None
        return tenant

    def replace(self, entries: Iterable[ApiKeyEntry]) -> None:
        previous = {t.name: t.limit for t in self._by_digest.values()}
        tenants: dict[bytes, Tenant] = {}
        for entry in entries:
            limit = None
            if entry.requests_per_minute is not None:
                share = replica_share(entry.requests_per_minute, self.share)
                kept = previous.get(entry.name)
                same = kept is not None and kept.limit == share and kept.window == self.window
                limit = kept if same else RateLimit(share, self.window)
            models = frozenset(entry.models) if entry.models is not None else None
            digest = entry.digest
            tenants[digest] = Tenant(entry.name, digest, models, limit, entry.priority or 0)
        self._by_digest = tenants
        self.version += 1
