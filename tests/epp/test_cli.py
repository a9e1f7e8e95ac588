"""The `epp` and `bbr` command lines: what an operator types becomes typed settings, or a clear error."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from epp.cli import parse_bbr_args, parse_epp_args

# Loopback, every port chosen by the system.
LOCAL = ["--bind", "127.0.0.1", "--grpc-port", "0", "--health-port", "0", "--metrics-port", "0"]


def test_a_pool_deployment_command_line_becomes_settings() -> None:
    settings = parse_epp_args(
        ["--pool-name", "gemma-pool", "--pool-namespace", "llm", "--profile", "proxy-performance",
         "--pool-models", "google/gemma-2b-it, google/gemma-2b-it-lora", "--shed-on-saturation"]
    )
    assert settings.pool_name == "gemma-pool"
    assert settings.pool_namespace == "llm"
    assert settings.profile == "proxy-performance"
    assert settings.pool_models == ("google/gemma-2b-it", "google/gemma-2b-it-lora")
    assert settings.shed_on_saturation
    assert settings.max_body_bytes == 16 << 20
    assert (settings.grpc_port, settings.health_port, settings.metrics_port) == (9002, 9003, 9090)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--profile", "default"], "exactly one endpoint source"),
        (["--endpoints", "127.0.0.1:8000", "--pool-name", "p"], "exactly one endpoint source"),
        (["--endpoints", "127.0.0.1:8000", "--pool-models", " , "], "--pool-models"),
        (["--endpoints", "127.0.0.1:8000", "--grpc-port", "70000"], "--grpc-port"),
        (["--endpoints", "127.0.0.1:8000", "--pool-namespace", "ns"], "--pool-namespace"),
        (["--endpoints", "127.0.0.1:8000", "--max-body-bytes", "0"], "--max-body-bytes"),
        (["--endpoints", "127.0.0.1:8000", "--eject-after-failures", "0"], "--eject-after-failures"),
        (["--endpoints", "127.0.0.1:8000", "--event-loop", "trio"], "--event-loop"),
    ],
)
def test_a_bad_epp_command_line_exits_2_naming_the_problem(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_epp_args(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_ejection_flags_set_the_ejection_policy_and_the_rest_keeps_its_defaults() -> None:
    settings = parse_epp_args([
        "--endpoints", "127.0.0.1:8000", "--metrics-timeout", "0.25", "--eject-after-failures", "5",
        "--ejection-seconds", "2",
    ])
    assert settings.metrics_timeout == 0.25
    assert (settings.ejection.consecutive_failures, settings.ejection.base_ejection) == (5, 2.0)
    assert settings.ejection.consecutive_connect_failures == 2
    assert settings.ejection.max_ejection == 30.0


def test_the_bbr_knows_served_models_and_adapters() -> None:
    settings = parse_bbr_args(["--served-models", "a,b", "--adapter", "a-lora=a"])
    assert settings.served_models == ("a", "b")
    assert settings.adapters == {"a-lora": "a"}
    assert (settings.grpc_port, settings.health_port) == (9004, 9005)


def test_a_bbr_adapter_without_its_base_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_bbr_args(["--adapter", "lonely"])
    assert "--adapter 'lonely': expected ADAPTER=BASE" in capsys.readouterr().err


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process already listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize("flag", ["--grpc-port", "--health-port", "--metrics-port"])
def test_a_port_already_in_use_exits_2_naming_the_address_without_a_traceback(
    busy_port: int, flag: str
) -> None:
    ports = {"--grpc-port": "0", "--health-port": "0", "--metrics-port": "0", flag: str(busy_port)}
    argv = ["--bind", "127.0.0.1", *(item for pair in ports.items() for item in pair)]
    bbr = "import sys; from epp.cli import bbr_main; sys.exit(bbr_main(sys.argv[1:]))"
    run = subprocess.run(
        [sys.executable, "-c", bbr, *argv],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert run.returncode == 2, run.stderr
    assert f"error: cannot listen on 127.0.0.1:{busy_port}" in run.stderr
    assert "Traceback" not in run.stderr
    assert "never awaited" not in run.stderr


def test_secure_serving_with_a_mounted_certificate_parses_for_both_commands(tmp_path: Path) -> None:
    epp = parse_epp_args(["--endpoints", "127.0.0.1:8000", "--secure-serving", "--cert-path", str(tmp_path)])
    bbr = parse_bbr_args(["--secure-serving"])
    assert (epp.secure_serving, epp.cert_path) == (True, tmp_path)
    assert (bbr.secure_serving, bbr.cert_path) == (True, None)


def test_every_flag_left_out_takes_the_settings_default_and_its_help_shows_it() -> None:
    from epp.cli import EppSettings, epp_parser

    settings = parse_epp_args(["--endpoints", "127.0.0.1:8000"])
    defaults = EppSettings(endpoints="127.0.0.1:8000")
    assert settings == defaults
    help_text = " ".join(epp_parser().format_help().split())
    fields = EppSettings.model_fields
    assert f"seconds between scrapes (default: {fields['metrics_interval'].default})" in help_text
    assert f"Prometheus /metrics port (default: {fields['metrics_port'].default})" in help_text


def test_the_bbr_takes_an_api_key_file_and_its_share_of_the_limits(tmp_path: Path) -> None:
    keys = tmp_path / "api-keys.yaml"
    settings = parse_bbr_args(["--api-keys-file", str(keys), "--limit-share", "3"])
    assert (settings.api_keys_file, settings.limit_share) == (keys, 3)
    assert parse_bbr_args([]).api_keys_file is None  # the one box's default: open


def test_a_bbr_limit_share_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_bbr_args(["--limit-share", "0"])
    assert "--limit-share" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("- name: team-a\n  key: sk-too-short-for-a-key\n", "apiKeys[0].key: is shorter than 32 characters"),
        ("- name: team-a\n  key: sk-0123456789abcdefghijklmnopqrstuv\n  models: [meta/llama]\n",
         "apiKeys[0].models[0]: 'meta/llama' is not served (served: a, a-lora)"),
        (None, "No such file or directory"),
    ],
    ids=["short-key", "model-not-served", "missing-file"],
)
def test_a_bbr_with_a_bad_key_file_exits_2_naming_the_entry_and_never_the_key(
    tmp_path: Path, content: str | None, says: str
) -> None:
    keys = tmp_path / "api-keys.yaml"
    if content is not None:
        keys.write_text(content)
    argv = [*LOCAL, "--served-models", "a", "--adapter", "a-lora=a", "--api-keys-file", str(keys)]
    run = refused("bbr", argv)
    assert f"error: --api-keys-file {keys}: " in run.stderr
    assert says in run.stderr
    assert "sk-too-short" not in run.stderr
    assert "sk-0123456789" not in run.stderr


def test_both_commands_run_on_uvloop_unless_told_asyncio() -> None:
    assert parse_epp_args(["--endpoints", "127.0.0.1:8000"]).event_loop == "uvloop"
    assert parse_bbr_args([]).event_loop == "uvloop"
    fallback = parse_epp_args(["--endpoints", "127.0.0.1:8000", "--event-loop", "asyncio"])
    assert fallback.event_loop == "asyncio"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("short-secret\n", "the peer key must be at least 16 bytes, got 12"),
        (None, "No such file or directory"),
    ],
    ids=["short-key", "missing-file"],
)
def test_an_epp_with_a_bad_peer_key_exits_2_naming_the_flag_and_never_the_key(
    tmp_path: Path, content: str | None, says: str
) -> None:
    key = tmp_path / "peer.key"
    if content is not None:
        key.write_text(content)
    argv = [*LOCAL, "--endpoints", "127.0.0.1:1", "--replicas", "2", "--peers", "127.0.0.1:9",
            "--peer-port", "0", "--peer-key-file", str(key)]
    run = refused("epp", argv)
    assert f"error: --peer-key-file {key}" in run.stderr
    assert says in run.stderr
    assert "short-secret" not in run.stderr


def refused(command: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (epp or bbr) with ``argv``, which must exit 2 without a traceback."""
    code = f"import sys; from epp.cli import {command}_main; sys.exit({command}_main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=30,
                         check=False)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    return run


def test_a_command_freezes_its_start_up_heap_once_it_serves() -> None:
    # The BBR's own _run, its own serve_bbr: once the ports are bound, what start-up built is frozen
    # out of the cyclic collector's walks (epp.memory.freeze_startup_heap).
    code = """
import asyncio, gc, sys
from epp import cli

async def serve(settings, stop, bound):
    async def once_serving():
        await asyncio.shield(bound)
        await asyncio.sleep(0)
        print("frozen", gc.get_freeze_count(), flush=True)
        stop.set()

    watch = asyncio.ensure_future(once_serving())
    await cli.serve_bbr(settings, stop, bound)
    await watch

sys.exit(cli._run(serve, cli.parse_bbr_args(sys.argv[1:])))
"""
    run = subprocess.run([sys.executable, "-c", code, *LOCAL], capture_output=True, text=True, timeout=60,
                         check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    [line] = [line for line in run.stdout.splitlines() if line.startswith("frozen ")]
    assert int(line.split()[1]) > 10_000  # the modules, descriptors and settings start-up built
