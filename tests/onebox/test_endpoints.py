"""Bring-your-own servers: what an ``endpoints:`` URL may be, and what the topology refuses."""

from __future__ import annotations

import pytest

from onebox.endpoints import ServerURL, parse_server_url
from onebox.topology import TopologyError, parse_topology


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://127.0.0.1:8000", ServerURL("127.0.0.1", 8000)),
        ("http://localhost:8000/", ServerURL("127.0.0.1", 8000)),
        ("http://[::1]:9000", ServerURL("::1", 9000)),
        (" http://192.168.1.20:8000 ", ServerURL("192.168.1.20", 8000)),
    ],
)
def test_a_server_url_is_http_ip_and_port(text: str, expected: ServerURL) -> None:
    assert parse_server_url(text) == expected


def test_an_ipv6_server_keeps_its_brackets_in_url_and_address() -> None:
    url = parse_server_url("http://[fd00::5]:8000")
    assert (url.host, url.url) == ("fd00::5", "http://[fd00::5]:8000")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("https://127.0.0.1:8000", "scheme must be http"),
        ("127.0.0.1:8000", "scheme must be http"),
        ("http://127.0.0.1", "port is required"),
        ("http://127.0.0.1:0", "port must be from 1 to 65535"),
        ("http://127.0.0.1:99999", "not a URL"),
        ("http://127.0.0.1:8000/v1", "only http://HOST:PORT"),
        ("http://127.0.0.1:8000?x=1", "only http://HOST:PORT"),
        ("http://user:pw@127.0.0.1:8000", "credentials"),
        ("http://gpu-box:8000", "must be an IP address"),
        ("http://0.0.0.0:8000", "cannot be a server's address"),
    ],
)
def test_a_bad_server_url_is_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_server_url(text)


def byo(urls: str, extra: str = "", top: str = "") -> str:
    return f"{top}models:\n  - {{name: a, served_name: org/a, endpoints: [{urls}]{extra}}}\n"


def test_loopback_and_private_servers_are_accepted() -> None:
    topology = parse_topology(byo("http://127.0.0.1:8000, http://10.1.2.3:8000, 'http://[fd00::1]:8000'"))
    assert [str(u) for u in topology.models[0].endpoints] == [
        "http://127.0.0.1:8000", "http://10.1.2.3:8000", "http://[fd00::1]:8000",
    ]  # fmt: skip


def test_a_public_server_needs_the_topology_to_allow_it_and_says_why() -> None:
    with pytest.raises(TopologyError) as refused:
        parse_topology(byo("http://127.0.0.1:8000, http://8.8.8.8:8000"))
    message = str(refused.value)
    assert "http://8.8.8.8:8000 is neither loopback nor a private address" in message
    assert "plain HTTP" in message
    assert "allow_public_endpoints: true" in message
    allowed = parse_topology(byo("http://8.8.8.8:8000", top="allow_public_endpoints: true\n"))
    assert str(allowed.models[0].endpoints[0]) == "http://8.8.8.8:8000"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (", replicas: 2", "'replicas' does not apply to bring-your-own endpoints"),
        (", backend: vllm", "'backend' does not apply"),
        (", sim: {max_num_seqs: 4}", "'sim' does not apply"),
    ],
)
def test_settings_of_started_pods_are_refused_for_endpoints(extra: str, reason: str) -> None:
    with pytest.raises(TopologyError, match=reason):
        parse_topology(byo("http://127.0.0.1:8000", extra))


def test_a_repeated_endpoint_is_refused() -> None:
    with pytest.raises(TopologyError, match="repeated"):
        parse_topology(byo("http://127.0.0.1:8000, http://localhost:8000"))


def test_options_of_the_other_backend_are_refused() -> None:
    with pytest.raises(TopologyError, match="'vllm' options need backend: vllm"):
        parse_topology("models: [{name: a, served_name: org/a, vllm: {max_num_seqs: 2}}]")
    with pytest.raises(TopologyError, match="'sim' options need backend: sim"):
        parse_topology("models: [{name: a, served_name: org/a, backend: vllm, sim: {itl_ms: 1}}]")
    with pytest.raises(TopologyError, match="'adapters' names the LoRA adapters of bring-your-own"):
        parse_topology("models: [{name: a, served_name: org/a, adapters: [x]}]")


def test_each_kind_of_pod_names_its_lora_parents() -> None:
    topology = parse_topology(
        "models:\n"
        "  - {name: a, served_name: org/a, sim: {loras: {a-sql: org/a}}}\n"
        "  - {name: b, served_name: org/b, backend: vllm, vllm: {loras: {b-chat: null}}}\n"
        "  - {name: c, served_name: org/c, endpoints: ['http://127.0.0.1:8000'], adapters: [c-fr]}\n"
    )
    assert [m.lora_parents for m in topology.models] == [
        {"a-sql": "org/a"}, {"b-chat": "org/b"}, {"c-fr": "org/c"},
    ]  # fmt: skip
