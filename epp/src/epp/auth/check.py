"""The key check at the front door: who is calling, may they use this model, and not too often.

The BBR calls ``authenticate`` on the request headers (before it reads the body), then, once the
body names the model, ``authorize`` and ``admit``. Each refusal is an OpenAI-style error:

- no key, or a key not in the list: 401 ``authentication_error`` with ``WWW-Authenticate: Bearer``,
  the same bytes either way (a client cannot tell a revoked key from a mistyped one);
- a model the key may not use: the very 404 ``model_not_found`` a model that does not exist gets,
  message included (it lists only the key's models), so a key cannot probe which models exist;
- over the key's limit: 429 ``rate_limit_exceeded`` with ``Retry-After`` (whole seconds).

A key is read from ``Authorization: Bearer <key>`` (what OpenAI SDKs send), else from ``x-api-key``;
only its SHA-256 digest is looked up, and neither the key nor its digest is ever logged, counted or
answered. What passes on towards a model server carries the tenant's name in ``TENANT_HEADER``
(overwriting whatever a client put there) and neither key header; the BBR writes those headers.
Refusals are plain :class:`epp.refusals.RequestError` subclasses: this package knows no transport.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from epp.auth.keys import hash_key
from epp.auth.limits import Clock, retry_after_seconds
from epp.auth.store import KeyStore, Tenant
from epp.contract import API_KEY_HEADER, AUTHORIZATION_HEADER
from epp.refusals import RequestError, unknown_model

_UNAUTHENTICATED_MESSAGE = (
    "A valid API key is required: send it as 'Authorization: Bearer <key>' or in the 'x-api-key' header."
)
_WWW_AUTHENTICATE = (("www-authenticate", "Bearer"),)


class AuthError(RequestError):
    """A refusal of the key check: 401 (with ``WWW-Authenticate``) or 429 (with ``Retry-After``)."""


def unauthenticated(reason: str) -> AuthError:
    return AuthError(401, _UNAUTHENTICATED_MESSAGE, None, reason, headers=_WWW_AUTHENTICATE)


def not_allowed(tenant: Tenant, model: str, served: Sequence[str]) -> RequestError:
    """The 404 of ``errors.unknown_model`` listing the models the key may use."""
    listed = [m for m in served if tenant.allows(m)] if served else sorted(tenant.models or ())
    refusal = unknown_model(model, listed)
    refusal.reason = "model_not_allowed"
    return refusal


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>``, else ``x-api-key``; None if neither."""
    authorization = headers.get(AUTHORIZATION_HEADER)
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get(API_KEY_HEADER, "").strip()
    return key or None


class KeyCheck:
    """The check against one ``KeyStore``; ``clock`` drives the rate limits (monotonic seconds)."""

    def __init__(self, store: KeyStore, *, clock: Clock = time.monotonic) -> None:
        self.store = store
        self._clock = clock

    def authenticate(self, headers: Mapping[str, str]) -> Tenant:
        key = presented_key(headers)
        if key is None:
            raise unauthenticated("no_key")
        tenant = self.store.find(hash_key(key))
        if tenant is None:
            raise unauthenticated("bad_key")
        return tenant

    def authorize(self, tenant: Tenant, model: str, served: Sequence[str] = ()) -> None:
        """Refuse a model ``tenant`` may not use exactly as a model no one serves (only the reason,
        kept for metrics, differs); ``served``: the listed models (empty: not known)."""
        if not tenant.allows(model):
            raise not_allowed(tenant, model, served)

    def admit(self, tenant: Tenant) -> None:
        limit = tenant.limit
        if limit is None:
            return
        wait = limit.take(self._clock())
        if wait > 0:
            seconds = retry_after_seconds(wait)
            raise AuthError(
                429,
                f"This API key is over its rate limit; retry in {seconds} s.",
                None,
                "rate_limited",
                retry_after=seconds,
            )
