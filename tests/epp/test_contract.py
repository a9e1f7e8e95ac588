"""The one contract every package shares: addresses Envoy can route, and the error body."""

from __future__ import annotations

import json

import pytest
from epp.contract import error_body, join_host_port, split_host_port


@pytest.mark.parametrize(
    ("host", "port", "address"),
    [("10.0.0.1", 8000, "10.0.0.1:8000"), ("fd00::1", 8000, "[fd00::1]:8000"), ("::1", 1, "[::1]:1")],
)
def test_an_address_is_written_as_envoy_reads_it(host: str, port: int, address: str) -> None:
    assert join_host_port(host, port) == address
    assert split_host_port(address) == (host, port)


BAD = ["fd00::1:8000", "10.0.0.1", "[::1]8000", "[nope]:80", "h:0", "h:99999", ":80"]


@pytest.mark.parametrize("bad", BAD)
def test_a_malformed_address_is_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="'" + bad.replace("[", r"\[").replace("]", r"\]") + "'"):
        split_host_port(bad)


def test_the_gateway_error_names_its_type_by_status() -> None:
    body = json.loads(error_body(401, "no key", None))
    error = {"message": "no key", "type": "authentication_error", "param": None, "code": 401}
    assert body == {"error": error}
