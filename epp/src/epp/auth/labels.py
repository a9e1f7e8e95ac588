"""The ``api_key_name`` label's values: at the front door, and behind it.

At the front door a request is labelled with its key's name, ``_none`` without a key and
``_unknown`` with a key not in the list (a name starts with a letter or digit, so these can never
be mistaken for one). The EPP does not hold the key list: it reads the tenant's name from
``TENANT_HEADER``, which the front door sets. To keep the label's values bounded whatever reaches
the EPP, a missing header is ``_none``, and a value that is not a key name, or a new name once
``limit`` names are in use, is ``_other``.
"""

from __future__ import annotations

from epp.auth.keys import is_key_name
from epp.auth.store import Tenant

NO_KEY = NO_TENANT = "_none"
UNKNOWN_KEY = "_unknown"
OTHER_TENANT = "_other"
DEFAULT_MAX_TENANTS = 200


def key_name(tenant: Tenant | None, outcome: str) -> str:
    """The front door's label for a finished request: its tenant's name, or why it has none."""
    if tenant is not None:
        return tenant.name
    return UNKNOWN_KEY if outcome == "bad_key" else NO_KEY


class TenantLabels:
    """Label values for tenant names, at most ``limit`` distinct ones plus the two fixed values."""

    __slots__ = ("_known", "limit")

    def __init__(self, limit: int = DEFAULT_MAX_TENANTS) -> None:
        if limit <= 0:
            raise ValueError(f"the tenant label limit must be positive, got {limit}")
        self.limit = limit
        self._known: set[str] = set()

    def label(self, tenant: str | None) -> str:
        if not tenant:
            return NO_TENANT
        if tenant in self._known:
            return tenant
        if len(self._known) >= self.limit or not is_key_name(tenant):
            return OTHER_TENANT
        self._known.add(tenant)
        return tenant
