"""The gateway's refusals: plain exceptions that say what to answer, and nothing about how.

A :class:`RequestError` carries an HTTP status, a message for the client, the offending ``param``,
a short ``reason`` for metrics and logs, and optionally ``retry_after`` seconds and extra response
headers. Any part of the EPP or the BBR (parsing, the key check, admission, scheduling) raises one;
the ext_proc layer alone turns it into an OpenAI-style ImmediateResponse
(``epp.extproc.errors.refusal_response``). So this module imports no transport, and ``epp.auth``
refuses requests without knowing ext_proc exists.

These are ordinary ``Exception`` subclasses (not frozen dataclasses): a context manager, a tracing
span or ``add_note`` may set their ``__traceback__`` and notes as on any other exception.
"""

from __future__ import annotations

from epp.contract import NOT_FOUND_MESSAGE, echoed, error_body


class RequestError(Exception):
    """A request the servers refuse: its HTTP status, a message for the client and the offending param."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        reason: str = "error",
        *,
        retry_after: int | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.param = param
        # Short machine-readable outcome for metrics and logs, e.g. "invalid_json".
        self.reason = reason
        # Whole seconds for a ``Retry-After`` header (429, 503).
        self.retry_after = retry_after
        # Further response headers, e.g. ``www-authenticate`` on a 401.
        self.headers = headers

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({self.status}, {self.message!r}, param={self.param!r}, reason={self.reason!r})"

    def body(self) -> bytes:
        return error_body(self.status, self.message, self.param)

    def response_headers(self) -> tuple[tuple[str, str], ...]:
        """The answer's headers besides its content type."""
        if self.retry_after is None:
            return self.headers
        return (*self.headers, ("retry-after", str(self.retry_after)))


def unknown_model(model: str, served: list[str]) -> RequestError:
    listed = ", ".join(served) if served else "none"
    return RequestError(
        404, f"The model '{echoed(model)}' does not exist. Models served: {listed}.", "model", "unknown_model"
    )


def bodyless(method: str, path: str) -> RequestError:
    """The answer to a request without a body that is no model list read, alike in both routing
    modes: a read (GET, HEAD) of anything else is a 404, any other method needs a JSON body (400).
    (A method a path does not take never gets here: ``epp.api_screen`` answers it 405 on its headers.)"""
    if method in ("GET", "HEAD"):
        return RequestError(404, NOT_FOUND_MESSAGE, None, "not_found")
    return RequestError(
        400, f"{echoed(method)} {echoed(path)} has no body; send a JSON body with a 'model'.", None, "no_body"
    )


def missing_model() -> RequestError:
    return RequestError(
        400, "The request body has no 'model' field (a non-empty string).", "model", "no_model"
    )


def internal_error() -> RequestError:
    """A bug met while deciding on a request: the client gets a 500, not a broken stream."""
    return RequestError(
        500, "The gateway failed while routing this request; the failure is logged.", None, "internal_error"
    )


def body_too_large(limit: int) -> RequestError:
    return RequestError(413, f"The request body exceeds {limit} bytes.", None, "body_too_large")
