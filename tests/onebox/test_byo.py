"""The one box in front of servers it did not start, and a real-vLLM pod that cannot start."""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from onebox import children
from onebox.box import MODES, GatewayNotServing, Mode, OneBox
from onebox.realvllm import PYTHON_ENV, VllmNotInstalled
from onebox.supervisor import ChildDied, Supervisor
from onebox.topology import parse_topology

pytestmark = pytest.mark.envoy

ALPHA, BETA = "org/alpha", "org/beta"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def own_servers() -> AsyncIterator[dict[str, list[str]]]:
    """Simulators started outside the box, as a user's own servers would be: model -> URLs."""
    supervisor = Supervisor()
    urls: dict[str, list[str]] = {ALPHA: [], BETA: []}
    try:
        for model, count in ((ALPHA, 2), (BETA, 1)):
            for i in range(count):
                args = ["--model", model, "--time-scale", "0"]
                if model == ALPHA:
                    args += ["--lora", f"alpha-sql={ALPHA}"]
                name = f"own-{model[4:]}-{i}"
                child = await supervisor.launch(children.simulator(name, "127.0.0.1", args))
                ports = await supervisor.wait_ready(child, within=30)
                urls[model].append(f"http://127.0.0.1:{ports['http']}")
        yield urls
    finally:
        await supervisor.stop()


def byo_topology(urls: dict[str, list[str]]) -> str:
    alpha, beta = ", ".join(urls[ALPHA]), ", ".join(urls[BETA])
    return (
        "models:\n"
        f"  - {{name: alpha, served_name: {ALPHA}, endpoints: [{alpha}], adapters: [alpha-sql]}}\n"
        f"  - {{name: beta, served_name: {BETA}, endpoints: [{beta}]}}\n"
    )


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("mode", MODES)
async def test_the_box_routes_to_servers_it_did_not_start(
    own_servers: dict[str, list[str]], mode: Mode
) -> None:
    topology = parse_topology(byo_topology(own_servers))
    async with OneBox(topology, mode=mode) as box:
        assert [(p.name, p.url, p.pid) for p in box.pods] == [
            ("alpha-0", own_servers[ALPHA][0], None),
            ("alpha-1", own_servers[ALPHA][1], None),
            ("beta-0", own_servers[BETA][0], None),
        ]
        assert [c.name for c in box.children if c.name.startswith(("alpha", "beta"))] == []
        async with httpx.AsyncClient(base_url=box.gateway_url, timeout=10) as client:
            pods: dict[str, set[str]] = {}
            for model in (ALPHA, BETA, "alpha-sql") * 6:
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
                answer = await client.post("/v1/chat/completions", json=body)
                assert (answer.status_code, answer.json()["model"]) == (200, model)
                pods.setdefault(model, set()).add(answer.headers["x-inference-pod"])
            listed = (await client.get("/v1/models")).json()
    # Every request reached a server of its model (which of the two alpha servers is the EPP's pick).
    alphas = {"own-alpha-0", "own-alpha-1"}
    assert pods.keys() == {ALPHA, "alpha-sql", BETA}
    assert pods[ALPHA] <= alphas
    assert pods["alpha-sql"] <= alphas
    assert pods[BETA] == {"own-beta-0"}
    assert sorted(m["id"] for m in listed["data"]) == sorted([ALPHA, BETA, "alpha-sql"])


@pytest.mark.asyncio(loop_scope="module")
async def test_an_endpoint_that_never_answers_is_named_within_the_startup_timeout() -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        silent = bound.getsockname()[1]
        await _never_answers(silent)


async def _never_answers(silent: int) -> None:
    topology = parse_topology(
        f"models: [{{name: a, served_name: org/a, endpoints: ['http://127.0.0.1:{silent}']}}]"
    )
    with pytest.raises(GatewayNotServing, match=rf"a-0: 127.0.0.1:{silent} did not answer GET /v1/models"):
        await OneBox(topology, startup_timeout=1).start()


VLLM_POD = "models: [{name: real, served_name: org/real, backend: vllm, vllm: {model: /nonexistent}}]"


@pytest.mark.asyncio(loop_scope="module")
async def test_a_vllm_pod_that_dies_is_reported_with_its_last_log_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PYTHON_ENV, sys.executable)  # an interpreter without vLLM: the server cannot start
    with pytest.raises(ChildDied) as died:
        await OneBox(parse_topology(VLLM_POD), startup_timeout=30).start()
    assert died.value.name == "real-0"
    assert "No module named 'vllm'" in str(died.value)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_vllm_pod_without_the_vllm_venv_says_how_to_make_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(PYTHON_ENV, str(tmp_path / "missing" / "python"))
    with pytest.raises(VllmNotInstalled, match="run `make vllm-venv`"):
        await OneBox(parse_topology(VLLM_POD)).start()
