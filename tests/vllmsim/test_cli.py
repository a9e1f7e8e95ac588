"""``python -m vllmsim`` as the one box starts it: a real process, a free port, SIGTERM to stop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import aiohttp
import pytest

from tests.vllmsim.conftest import GEMMA
from vllmsim import parse_args

START_TIMEOUT = 30.0


async def test_the_cli_serves_a_model_on_the_port_it_prints_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllmsim", "--host", "127.0.0.1", "--port", "0", "--model", GEMMA,
        "--lora", f"gemma-sql={GEMMA}", "--pod-name", "gemma-0", "--time-scale", "0", "--seed", "3",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)).decode().strip()
        assert line.startswith(f"vllmsim gemma-0 serving {GEMMA},gemma-sql at http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
            async with client.get(f"{url}/health") as health:
                assert health.status == 200
            body = {"model": "gemma-sql", "prompt": "hello", "max_tokens": 4}
            async with client.post(f"{url}/v1/completions", json=body) as response:
                answer = await response.json()
                assert response.headers["x-inference-pod"] == "gemma-0"
        assert answer["model"] == "gemma-sql"
        assert answer["usage"]["completion_tokens"] == 4
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), START_TIMEOUT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--lora", "sql=other/model"], "not served"),
        (["--lora", "sql"], "ADAPTER=BASE"),
        (["--failure-rate", "1.5"], "failure_rate"),
        (["--failure-kind", "500"], "invalid choice"),
        (["--model", GEMMA], "repeat"),
    ],
)
def test_bad_flags_are_rejected_with_a_message_naming_them(
    args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--model", GEMMA, *args])
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_flags_map_onto_the_config() -> None:
    config = parse_args([
        "--model", GEMMA, "--model", "other", "--lora", f"sql={GEMMA}", "--max-num-seqs", "4",
        "--itl-ms", "20", "--kv-cache-blocks", "100", "--time-scale", "0", "--failure-rate", "0.5",
        "--failure-kind", "429", "--startup-delay", "2", "--seed", "9",
    ])
    assert config.models == [GEMMA, "other"]
    assert config.loras == {"sql": GEMMA}
    assert (config.max_num_seqs, config.itl_ms, config.kv_cache_blocks) == (4, 20.0, 100)
    assert (config.time_scale, config.failure_rate, config.failure_kind) == (0.0, 0.5, 429)
    assert (config.startup_delay, config.seed, config.port) == (2.0, 9, 0)
