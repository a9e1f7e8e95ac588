"""A key holder's attacks on the front door, end to end through the real Envoy in both routing modes
(issue 20): path and method tricks, vLLM's admin routes, ``GET /v1/models`` with a body, a model
oracle, a compressed body, HTTP/1.0. Requests go out as raw bytes, so no client library normalises
a path before Envoy sees it; what reached a pod is read from the simulators' own record."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.epp.test_gateway_keys_e2e import GEMMA, KEY_A, KEY_B, PHI, Gateway, closed_gateway

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

MODES = ["per-model-pools", "unified-pool"]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, object]:
        document = json.loads(self.body)
        assert isinstance(document, dict), self.body
        error = document["error"]
        assert isinstance(error, dict)
        return error


async def send(url: str, method: str, path: str, *, key: str | None = KEY_B, body: bytes | None = None,
               headers: dict[str, str] | None = None, version: str = "HTTP/1.1") -> Answer:
    """One request written byte for byte (the path exactly as given), the answer read to its end."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    lines = [f"{method} {path} {version}", f"host: {host}", "connection: close"]
    if key is not None:
        lines.append(f"authorization: Bearer {key}")
    if body is not None:
        lines += ["content-type: application/json", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer_headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        answer_headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1]) if status_line else 0
    if answer_headers.get("transfer-encoding") == "chunked":
        rest = _dechunked(rest)
    return Answer(status, answer_headers, rest)


def _dechunked(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body, data = body + data[:size], data[size + 2:]
    return body


def chat(model: str) -> bytes:
    messages = [{"role": "user", "content": "hi"}]
    return json.dumps({"model": model, "messages": messages, "max_tokens": 2}).encode()


def proxied(gateway: Gateway) -> list[tuple[str, str]]:
    """Every request the gateway sent to a pod so far: (method, raw path)."""
    return [request for sim in gateway.sims.values() for request in sim.proxied]


PATH_TRICKS = [
    ("POST", "/v1/../metrics"),
    ("POST", "/v1/%2e%2e/metrics"),
    ("POST", "/v1/chat/completions/../../metrics"),
    ("POST", "/v1/chat/completions;x=1"),
    ("POST", "/v1/chat/completions/"),
    ("POST", "/v1/load_lora_adapter"),
    ("POST", "/v1/unload_lora_adapter"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/responses"),
    ("POST", "/metrics"),
    ("POST", "/v2/chat/completions"),
]


@pytest.mark.parametrize("mode", MODES)
async def test_only_the_apis_own_paths_and_methods_reach_a_pod(mode: str, tmp_path: Path) -> None:
    async with closed_gateway(mode, tmp_path) as gateway:
        url = gateway.url
        for method, path in PATH_TRICKS:
            answer = await send(url, method, path, body=chat(GEMMA))
            assert answer.status == 404, (path, answer)
            assert answer.error()["type"] == "not_found_error"
            assert answer.headers["content-type"] == "application/json"

        # An escaped slash is refused outright (Envoy: 400, in JSON).
        for path in ("/v1/..%2fmetrics", "/v1/chat%2Fcompletions", "/v1/..%5Cmetrics"):
            answer = await send(url, "POST", path, body=chat(GEMMA))
            assert answer.status == 400, (path, answer)
            assert answer.error()["type"] == "invalid_request_error"

        # A served path under another method: 405 naming what it takes; never forwarded.
        for method in ("PUT", "DELETE", "PATCH", "GET", "OPTIONS"):
            answer = await send(url, method, "/v1/chat/completions", body=chat(GEMMA))
            assert answer.status == 405, (method, answer)
            assert answer.headers["allow"] == "POST"
            assert answer.error()["type"] == "invalid_request_error"
        for method in ("POST", "DELETE"):
            answer = await send(url, method, "/v1/models", body=chat(GEMMA))
            assert (answer.status, answer.headers["allow"]) == (405, "GET, HEAD"), (method, answer)

        assert proxied(gateway) == []  # nothing above reached a pod

        # Merged slashes and resolved dot segments that land on a served path are that path, and
        # the pod gets the normalised one.
        for path in ("//v1//chat//completions", "/v1/models/../chat/completions"):
            answer = await send(url, "POST", path, body=chat(GEMMA))
            assert answer.status == 200, (path, answer)
        assert proxied(gateway) == [("POST", "/v1/chat/completions")] * 2


@pytest.mark.parametrize("mode", MODES)
async def test_get_v1_models_with_a_body_is_answered_by_the_gateway_never_a_pod(
    mode: str, tmp_path: Path
) -> None:
    async with closed_gateway(mode, tmp_path) as gateway:
        for path in ("/v1/models", f"/v1/models/{GEMMA}"):
            answer = await send(gateway.url, "GET", path, key=KEY_A, body=chat(GEMMA))
            assert answer.status == 200, (path, answer)
        listing = await send(gateway.url, "GET", "/v1/models", key=KEY_A, body=chat(GEMMA))
        assert [m["id"] for m in json.loads(listing.body)["data"]] == [GEMMA]  # only the key's
        hidden = await send(gateway.url, "GET", f"/v1/models/{PHI}", key=KEY_A, body=chat(GEMMA))
        assert hidden.status == 404
        assert proxied(gateway) == []


@pytest.mark.parametrize("mode", MODES)
async def test_a_model_the_key_may_not_use_looks_exactly_like_one_that_does_not_exist(
    mode: str, tmp_path: Path
) -> None:
    async with closed_gateway(mode, tmp_path) as gateway:
        forbidden = await send(gateway.url, "POST", "/v1/chat/completions", key=KEY_A, body=chat(PHI))
        fake = PHI.replace("Phi", "Pho")
        absent = await send(gateway.url, "POST", "/v1/chat/completions", key=KEY_A, body=chat(fake))
    assert forbidden.status == absent.status == 404
    assert forbidden.body == absent.body.replace(fake.encode(), PHI.encode())
    assert forbidden.error()["message"] == f"The model '{PHI}' does not exist. Models served: {GEMMA}."
    ignored = {"date", "x-request-id", "content-length"}  # content-length: the two names differ in length
    assert {k: v for k, v in forbidden.headers.items() if k not in ignored} == {
        k: v for k, v in absent.headers.items() if k not in ignored
    }


@pytest.mark.parametrize("mode", MODES)
async def test_a_compressed_body_is_refused_and_http_1_0_gets_a_json_answer(
    mode: str, tmp_path: Path
) -> None:
    async with closed_gateway(mode, tmp_path) as gateway:
        for coding in ("gzip", "deflate, identity", "br"):
            answer = await send(gateway.url, "POST", "/v1/chat/completions", body=chat(GEMMA),
                                headers={"content-encoding": coding})
            assert answer.status == 415, (coding, answer)
            assert answer.error()["type"] == "invalid_request_error"
        plain = await send(gateway.url, "POST", "/v1/chat/completions", body=chat(GEMMA),
                           headers={"content-encoding": "identity"})
        assert plain.status == 200

        # HTTP/1.0 is answered as 1.1 is, in JSON: served, or refused with the same error.
        old = await send(gateway.url, "POST", "/v1/chat/completions", body=chat(GEMMA), version="HTTP/1.0")
        assert old.status == 200, old
        assert json.loads(old.body)["model"] == GEMMA
        refused = await send(gateway.url, "GET", "/foo", key=None, version="HTTP/1.0")
        assert refused.status == 401, refused
        assert refused.error()["type"] == "authentication_error"
        assert proxied(gateway) == [("POST", "/v1/chat/completions")] * 2
