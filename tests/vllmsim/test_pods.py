"""``python -m vllmsim --pods N``: a pool of simulated pods in one process, each a whole server."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import aiohttp
import pytest

from tests.vllmsim.conftest import GEMMA, scrape, value
from vllmsim.config import parse_command

START_TIMEOUT = 30.0


async def test_each_pod_of_one_process_answers_its_own_metrics_models_and_name() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllmsim", "--host", "127.0.0.1", "--pods", "3", "--pod-name", "big",
        "--model", GEMMA, "--time-scale", "0", "--seed", "1",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        stdout = process.stdout
        lines = [(await asyncio.wait_for(stdout.readline(), START_TIMEOUT)).decode().strip() for _ in "abcd"]
        urls = [line.rsplit(" ", 1)[1] for line in lines[:3]]
        assert [line.split()[1] for line in lines[:3]] == ["big-0", "big-1", "big-2"]
        ports = [url.rsplit(":", 1)[1] for url in urls]
        assert lines[3] == f"vllmsim pods serving at ports {','.join(ports)}"
        assert len(set(ports)) == 3
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
            body = {"model": GEMMA, "prompt": "hello", "max_tokens": 2}
            async with client.post(f"{urls[1]}/v1/completions", json=body) as response:
                assert response.status == 200
                assert response.headers["x-inference-pod"] == "big-1"
            for i, url in enumerate(urls):
                async with client.get(f"{url}/v1/models") as models:
                    assert models.headers["x-inference-pod"] == f"big-{i}"
                    assert [card["id"] for card in (await models.json())["data"]] == [GEMMA]
                samples = await scrape(client, url)
                # Only the pod that served the request counted it: each pod has its own engine.
                assert value(samples, "vllm:request_success_total") == (1.0 if i == 1 else 0.0)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), START_TIMEOUT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_a_pool_listens_on_consecutive_ports_or_on_the_ports_it_is_given() -> None:
    _, layout = parse_command(["--model", GEMMA, "--pods", "3", "--base-port", "9100"])
    assert [layout.port_of(i) for i in range(3)] == [9100, 9101, 9102]
    _, layout = parse_command(["--model", GEMMA, "--pods", "2", "--ports", "9300,9200"])
    assert [layout.port_of(i) for i in range(2)] == [9300, 9200]
    _, layout = parse_command(["--model", GEMMA, "--pods", "2"])
    assert [layout.port_of(i) for i in range(2)] == [0, 0]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--pods", "2", "--port", "9000"], "--base-port or --ports"),
        (["--pods", "2", "--ports", "9000"], "lists 1 ports for 2 pods"),
        (["--pods", "3", "--base-port", "65534"], "past port 65535"),
        (["--pods", "0"], "pods"),
    ],
)
def test_a_bad_pool_is_refused_naming_why(
    args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_command(["--model", GEMMA, *args])
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_a_pods_metrics_page_is_rendered_again_only_once_something_on_it_changed() -> None:
    from vllmsim.config import SimConfig
    from vllmsim.state import SimState

    pod = SimState(SimConfig(models=[GEMMA], time_scale=0))
    first = pod.metrics.render()
    assert pod.metrics.render() is first  # 2,000 scrapes a second at 100 pods: not rendered each time
    pod.metrics.admitted(pod.engine.new_sequence("cmpl-1", GEMMA, "hello there", 2))
    second = pod.metrics.render()
    assert second is not first
    assert b'vllm:prompt_tokens_total{engine="0",model_name="google/gemma-2b-it"}' in second
