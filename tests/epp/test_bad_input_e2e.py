"""Both routing modes answer every bad input alike, through the real Envoy of the one box.

``CASES`` is the one list: each case runs against the ``gpu`` box in per-model pools (BBR, then one
EPP per pool) and in a unified pool (one EPP), and the README's table of inputs -> status -> error
type is rendered from it (checked below), so the two cannot drift apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from epp.contract import ERROR_TYPES

from onebox.box import MODES, OneBox
from onebox.topology import load_preset

GEMMA = "google/gemma-2b-it"
README = Path(__file__).resolve().parents[2] / "README.md"
POD = "the pod's own, unchanged"


@dataclass(frozen=True)
class Case:
    what: str  # the input, as the README's table says it
    method: str
    path: str
    body: bytes | None
    status: int
    error_type: str  # the body's error.type; POD: whatever the model server said, passed through
    pod_type: str | None = None  # for POD rows: the simulator's (vLLM's) type
    headers: tuple[tuple[str, str], ...] = ()

    def row(self) -> str:
        kind = f"`{self.pod_type}` ({POD})" if self.error_type == POD else f"`{self.error_type}`"
        return f"| {self.what} | {self.status} | {kind} |"


def chat(**fields: object) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()


CASES = [
    Case("`POST /v1/chat/completions` without a body", "POST", "/v1/chat/completions", None, 400,
         "invalid_request_error"),
    Case("a body that is not JSON", "POST", "/v1/chat/completions", b'{"model": ', 400,
         "invalid_request_error"),
    Case("a JSON body that is not an object", "POST", "/v1/completions", b"[1, 2]", 400,
         "invalid_request_error"),
    Case("no `model`", "POST", "/v1/chat/completions", chat(), 400, "invalid_request_error"),
    Case("`model` not a string, or empty", "POST", "/v1/chat/completions", chat(model=7), 400,
         "invalid_request_error"),
    Case("`model` no pool serves", "POST", "/v1/chat/completions", chat(model="no-such-model"), 404,
         "not_found_error"),
    Case("a 1 MB `model` (the name is quoted cut to 200 characters)", "POST", "/v1/chat/completions",
         chat(model="x" * 1_000_000), 404, "not_found_error"),
    Case("`GET /v1/models/NAME` of a model not served", "GET", "/v1/models/no-such-model", None, 404,
         "not_found_error"),
    Case("`GET` of another `/v1/` path (`/v1/foo`)", "GET", "/v1/foo", None, 404, "not_found_error"),
    Case("`DELETE /v1/models/NAME` (the SDK's `models.delete`)", "DELETE", f"/v1/models/{GEMMA}", None, 405,
         "invalid_request_error"),
    Case("`OPTIONS` of a `/v1/` path", "OPTIONS", "/v1/chat/completions", None, 405, "invalid_request_error"),
    Case("any path outside `/v1/` (`GET /foo`)", "GET", "/foo", None, 404, "not_found_error"),
    Case("a valid body on a path outside `/v1/` (`POST /foo`)", "POST", "/foo", chat(model=GEMMA), 404,
         "not_found_error"),
    Case("a model server's own route (`POST /v1/load_lora_adapter`)", "POST", "/v1/load_lora_adapter",
         chat(model=GEMMA), 404, "not_found_error"),
    Case("a served path under another method (`PUT /v1/chat/completions`; `Allow` says which)", "PUT",
         "/v1/chat/completions", chat(model=GEMMA), 405, "invalid_request_error"),
    Case("a compressed body (`Content-Encoding: gzip`)", "POST", "/v1/chat/completions", chat(model=GEMMA),
         415, "invalid_request_error", headers=(("content-encoding", "gzip"),)),
    Case("a bad field the model server refuses (`max_tokens: 0`)", "POST", "/v1/chat/completions",
         chat(model=GEMMA, max_tokens=0), 400, POD, "BadRequestError"),
]  # fmt: skip


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=MODES)
async def box(request: pytest.FixtureRequest) -> AsyncIterator[OneBox]:
    async with OneBox(load_preset("gpu"), mode=request.param, time_scale=0) as box:
        yield box


@pytest.mark.envoy
@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
async def test_a_bad_input_gets_the_same_status_and_error_type_in_both_modes(box: OneBox, case: Case) -> None:
    headers = {"content-type": "application/json"} if case.body is not None else {}
    headers.update(case.headers)
    url = box.gateway_url + case.path
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.request(case.method, url, data=case.body, headers=headers) as response,
    ):
        body = await response.read()
    error = json.loads(body)["error"]
    assert (response.status, error["type"]) == (case.status, case.pod_type or case.error_type), body[:300]
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id"), "every answer names its request (SDKs report it)"
    assert len(body) < 2_000  # nothing echoed whole


def test_the_readme_table_is_this_list_and_names_every_gateway_error_type() -> None:
    text = README.read_text()
    table = re.search(r"<!-- bad-input-table -->\n(.*?)\n<!-- /bad-input-table -->", text, re.S)
    assert table is not None, "README.md lacks the bad-input table markers"
    rows = [line for line in table.group(1).splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == [case.row() for case in CASES]
    types = re.search(r"<!-- error-types -->\n(.*?)\n<!-- /error-types -->", text, re.S)
    assert types is not None, "README.md lacks the error-types markers"
    listed = dict(re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", types.group(1), re.M))
    assert {int(status): kind for status, kind in listed.items()} == ERROR_TYPES
