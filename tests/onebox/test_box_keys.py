"""The one box with ``--api-keys``: closed the same way in both routing modes, checked before it starts."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from onebox.box import OneBox
from onebox.keys import KeysFileError
from onebox.topology import load_preset

pytestmark = pytest.mark.envoy

GEMMA = "google/gemma-2b-it"
PHI = "microsoft/Phi-3-mini-4k-instruct"
KEY_A = "sk-box-team-a-0123456789abcdefghijkl"
KEY_B = "sk-box-team-b-0123456789abcdefghijkl"  # in the file as its SHA-256 only


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


def keys_file(tmp_path: Path, entries: list[dict[str, object]]) -> Path:
    path = tmp_path / "api-keys.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


@pytest.mark.parametrize("mode", ["per-model-pools", "unified-pool"])
async def test_a_box_with_api_keys_refuses_a_stranger_and_serves_each_tenant_its_models(
    mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # team-a's key is in the file, and the box checks Gemma with it; only team-b's hash may use
    # Phi-3, so the box cannot ask Phi-3 itself and says so.
    path = keys_file(tmp_path, [
        {"name": "team-a", "key": KEY_A, "models": [GEMMA]},
        {"name": "team-b", "sha256": hashlib.sha256(KEY_B.encode()).hexdigest(), "models": [PHI]},
    ])  # fmt: skip
    caplog.set_level(logging.INFO, logger="onebox")
    async with (
        OneBox(load_preset("gpu"), mode=mode, time_scale=0, api_keys=path, bbr_replicas=2) as box,
        httpx.AsyncClient(base_url=box.gateway_url, timeout=10) as client,
    ):
        assert {"bbr-0", "bbr-1"} <= {c.name for c in box.children}  # the front door, in both modes
        argv = box.child("bbr-1").argv
        assert argv[argv.index("--limit-share") + 1] == "2"
        assert argv[argv.index("--api-keys-file") + 1] == str(path.resolve())

        for headers in ({}, {"authorization": "Bearer sk-not-a-key-of-this-box-0123456789"}):
            refused = await client.post("/v1/chat/completions", json=chat(GEMMA), headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error"]["type"] == "authentication_error"

        for key, model, pod in ((KEY_A, GEMMA, "gemma-0"), (KEY_B, PHI, "phi3-0")):
            answer = await client.post(
                "/v1/chat/completions", json=chat(model), headers={"authorization": f"Bearer {key}"}
            )
            assert (answer.status_code, answer.json()["model"], answer.headers["x-inference-pod"]) == (
                200, model, pod,
            )  # fmt: skip
        forbidden = await client.post("/v1/chat/completions", json=chat(PHI), headers={"x-api-key": KEY_A})
        assert forbidden.status_code == 404  # as if it did not exist: no model oracle
        listed = await client.get("/v1/models", headers={"x-api-key": KEY_A})
        assert [m["id"] for m in listed.json()["data"]] == [GEMMA]

    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{PHI}: no 'key:' entry") and "cannot ask it" in m for m in messages)
    assert not any(KEY_A in m or KEY_B in m for m in messages)


def test_a_box_refuses_a_bad_key_list_before_starting_anything(tmp_path: Path) -> None:
    short = "sk-too-short"
    path = keys_file(tmp_path, [
        {"name": "team-a", "key": KEY_A},
        {"name": "team-b", "key": short},
        {"name": "team-c", "key": KEY_B, "models": ["meta/llama-9000"]},
    ])  # fmt: skip
    with pytest.raises(KeysFileError) as raised:
        OneBox(load_preset("gpu"), api_keys=path)
    message = str(raised.value)
    assert "apiKeys[1].key: is shorter than 32 characters" in message
    assert "apiKeys[2].models[0]: 'meta/llama-9000' is not served" in message
    assert short not in message
    assert KEY_B not in message


async def test_run_rejects_a_bad_keys_file_naming_the_entry_with_exit_code_2(tmp_path: Path) -> None:
    path = keys_file(tmp_path, [{"name": "team-a", "key": KEY_A}, {"name": "team-a", "key": KEY_B}])
    missing = tmp_path / "nowhere.yaml"
    for keys, expected in ((path, "apiKeys[1].name: 'team-a' is already used by apiKeys[0]"),
                           (missing, f"--api-keys {missing}: No such file or directory")):  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "onebox", "run", "--preset", "gpu", "--api-keys", str(keys),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(30):
            out, err = await process.communicate()
        assert process.returncode == 2
        assert expected in err.decode()
        assert KEY_B not in err.decode()
        assert b"gateway" not in out


async def test_with_api_keys_no_key_reaches_a_log_file_even_when_debug_logging_is_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Envoy's debug log prints request headers: with keys on, the box runs Envoy at info and says so.
    path = keys_file(tmp_path, [{"name": "team-a", "key": KEY_A}])
    logs = tmp_path / "logs"
    caplog.set_level(logging.WARNING, logger="onebox")
    async with (
        OneBox(load_preset("gpu"), api_keys=path, log_level="debug", log_dir=logs, time_scale=0) as box,
        httpx.AsyncClient(base_url=box.gateway_url, timeout=10) as client,
    ):
        argv = box.child("envoy").argv
        assert argv[argv.index("--log-level") + 1] == "info"
        for headers in ({"authorization": f"Bearer {KEY_A}"}, {"x-api-key": KEY_A},
                        {"authorization": f"Bearer {KEY_B}"}):  # fmt: skip
            await client.post("/v1/chat/completions", json=chat(GEMMA), headers=headers)
    assert any("Envoy runs at log level info, not debug" in r.getMessage() for r in caplog.records)
    texts = {log.name: log.read_text() for log in logs.iterdir()}
    assert "envoy.log" in texts
    for name, text in texts.items():
        assert KEY_A not in text, name
        assert KEY_B not in text, name
