"""Bring-your-own model servers: the ``endpoints:`` URLs of a topology model, checked.

A topology model may name OpenAI-compatible servers that already run (real vLLM on a GPU
workstation, say) instead of simulated pods::

    - name: llama
      served_name: meta-llama/Llama-3.1-8B-Instruct
      endpoints: [http://127.0.0.1:8000, http://192.168.1.20:8000]

Each URL must be ``http://IP:PORT`` (an IP literal: Envoy's clusters and the EPP's endpoints file
take addresses, not names; no path, query or credentials). Only loopback and private addresses are
accepted unless the topology sets ``allow_public_endpoints: true``: the box speaks plain HTTP to
its servers with no credentials, so every prompt and answer would cross the internet in clear
text, and the benchmark would load a machine that may not be yours.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from epp.contract import url_host
from pydantic import BeforeValidator

PUBLIC_FLAG = "allow_public_endpoints"
LOCALHOST = "localhost"


@dataclass(frozen=True, slots=True)
class ServerURL:
    """One bring-your-own server: ``http://host:port``."""

    host: str  # an IP address, IPv6 without brackets
    port: int

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.host)

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    @property
    def is_local_or_private(self) -> bool:
        """Loopback or a private range (10/8, 172.16/12, 192.168/16, fc00::/7, ...)."""
        return self.ip.is_loopback or self.ip.is_private

    def __str__(self) -> str:
        return self.url


def parse_server_url(value: object) -> ServerURL:
    """``http://IP:PORT`` (or ``http://localhost:PORT``, read as 127.0.0.1) -> :class:`ServerURL`.

    Raises ``ValueError`` saying what is wrong with the URL.
    """
    if isinstance(value, ServerURL):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a URL string like http://127.0.0.1:8000, got {type(value).__name__}")
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a URL: {exc}") from None
    if parts.scheme != "http":
        raise ValueError(
            f"{text!r}: the scheme must be http (the box speaks plain HTTP to its servers), "
            f"got {parts.scheme or 'none'!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r}: credentials in the URL are not supported")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r}: give only http://HOST:PORT (the box adds /v1/... itself)")
    if port is None:
        raise ValueError(f"{text!r}: the port is required, as in http://127.0.0.1:8000")
    if port == 0:
        raise ValueError(f"{text!r}: the port must be from 1 to 65535")
    host = parts.hostname or ""
    if host == LOCALHOST:
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{text!r}: the host must be an IP address (Envoy and the EPP address endpoints by IP), "
            f"got {host!r}"
        ) from None
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{text!r}: {ip} cannot be a server's address")
    return ServerURL(str(ip), port)


EndpointURL = Annotated[ServerURL, BeforeValidator(parse_server_url)]


def check_public(urls: list[ServerURL], *, allow_public: bool, model: str) -> None:
    """Refuse addresses that are neither loopback nor private unless ``allow_public``."""
    if allow_public:
        return
    public = [str(u) for u in urls if not u.is_local_or_private]
    if public:
        raise ValueError(
            f"model {model}: {', '.join(public)} {'is' if len(public) == 1 else 'are'} neither loopback "
            "nor a private address; the box sends prompts to its servers over plain HTTP without "
            f"credentials, so it only does that across the internet when the topology sets "
            f"{PUBLIC_FLAG}: true"
        )
