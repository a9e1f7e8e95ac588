"""The console scripts set gRPC's runtime settings before gRPC is loaded, and leave yours alone."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from epp.launch import DEFAULT_GRPC_EXPERIMENTS, GRPC_EXPERIMENTS, grpc_environment


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_both_commands_start_in_the_launcher() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name in ("epp", "bbr")}
    assert scripts == {"epp": "epp.launch:epp_main", "bbr": "epp.launch:bbr_main"}


def test_the_default_is_set_where_the_environment_sets_none() -> None:
    environ: dict[str, str] = {"PATH": "/bin"}
    grpc_environment(environ)
    assert environ == {"PATH": "/bin", GRPC_EXPERIMENTS: DEFAULT_GRPC_EXPERIMENTS}


def test_an_operators_own_experiments_are_kept() -> None:
    environ = {GRPC_EXPERIMENTS: "some_experiment"}
    grpc_environment(environ)
    assert environ == {GRPC_EXPERIMENTS: "some_experiment"}


def test_the_launcher_loads_no_grpc_before_the_settings_are_made() -> None:
    # gRPC reads GRPC_EXPERIMENTS when it is first imported: an import of grpc here would come first.
    done = _python("import sys, epp.launch; print('grpc' in sys.modules)", dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# Records what GRPC_EXPERIMENTS held when grpc was first imported, then runs a command's --help.
_WATCH_GRPC_IMPORT = """
import importlib.abc, os, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "grpc" and not seen:
            seen.append(os.environ.get("GRPC_EXPERIMENTS"))
        return None
sys.meta_path.insert(0, Watch())
from epp.launch import {command}
try:
    {command}(["--help"])
except SystemExit:
    pass
print(seen)
"""


@pytest.mark.parametrize("command", ["epp_main", "bbr_main"])
def test_each_command_sets_the_default_before_grpc_loads(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != GRPC_EXPERIMENTS}
    done = _python(_WATCH_GRPC_IMPORT.format(command=command), env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == repr([DEFAULT_GRPC_EXPERIMENTS])


def test_this_grpc_knows_the_default_experiment() -> None:
    # A gRPC that no longer has the experiment says so on stderr when it loads: time to revisit it.
    code = (
        "import asyncio, grpc\n"
        "async def main():\n"
        "    server = grpc.aio.server()\n"
        "    server.add_insecure_port('127.0.0.1:0')\n"
        "    await server.start()\n"
        "    await server.stop(None)\n"
        "asyncio.run(main())\n"
    )
    done = _python(code, {**os.environ, GRPC_EXPERIMENTS: DEFAULT_GRPC_EXPERIMENTS})
    assert done.returncode == 0, done.stderr
    assert "experiment" not in done.stderr.lower(), done.stderr
