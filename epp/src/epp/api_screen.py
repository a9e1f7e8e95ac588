"""The BBR's and the EPP's check of a request's method, path and body coding, on its headers alone.

``screen_route`` refuses, before any body byte is read, what ``epp.api_routes`` does not serve: 404
for a path outside the API, 405 (with ``Allow``) for a served path under another method, and 415 for
a body with a ``Content-Encoding`` other than identity (the front door reads the body as sent, so a
model server that decoded it would see other bytes than those it authorized). It returns the
request's ``RouteKind``: ``forward`` or ``models`` (the gateway answers that one itself, body or not).
Refusals are plain ``RequestError``s; the ext_proc layer turns them into answers.
"""

from __future__ import annotations

from collections.abc import Mapping

from epp.api_routes import ApiRoutes, RouteKind, unsupported_encoding
from epp.refusals import RequestError

_UNSUPPORTED_ENCODING = (
    "Request bodies must not be compressed: send them without Content-Encoding (or as 'identity')."
)


class RouteError(RequestError):
    """A 404, 405 (its ``allow`` header lists the methods the path takes) or 415 decided on the headers."""


def screen_route(routes: ApiRoutes, method: str, path: str, headers: Mapping[str, str]) -> RouteKind:
    """The request's kind; ``RouteError`` for one the gateway refuses."""
    kind = routes.kind(method, path)
    if kind == "not_found":
        raise RouteError(404, routes.not_found_message, None, "not_found")
    if kind == "method_not_allowed":
        allow = ", ".join(routes.allowed_methods(path))
        message = routes.method_not_allowed_message(path)
        raise RouteError(405, message, None, "method_not_allowed", headers=(("allow", allow),))
    if unsupported_encoding(headers.get("content-encoding")):
        raise RouteError(415, _UNSUPPORTED_ENCODING, None, "unsupported_encoding")
    return kind
