"""Serve the policy pack from its own virtualenv exactly as the Pulumi CLI does, and talk to it over gRPC.

The CLI starts a Python pack as `<venv>/bin/python -u -m pulumi.policy <engine> <pack dir>`, reads the
port it prints, then sends `Analyze` for each resource and `AnalyzeStack` for the whole stack.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / "policy"
PACK_PYTHON = PACK / ".venv" / "bin" / "python"
MISSING_VENV = "policy/.venv is missing: build the policy pack's virtualenv with `make policy-venv`"
START_TIMEOUT_S = 30.0


def struct(props: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(props)
    return message


def analyze(
    stub: analyzer_pb2_grpc.AnalyzerStub, resource_type: str, name: str, urn: str, props: Mapping[str, Any]
) -> list[Any]:
    """The diagnostics the pack reports for one resource."""
    request = analyzer_pb2.AnalyzeRequest(type=resource_type, properties=struct(props), urn=urn, name=name)
    return list(stub.Analyze(request, timeout=20).diagnostics)


def analyze_stack(
    stub: analyzer_pb2_grpc.AnalyzerStub, resources: Sequence[tuple[str, str, str, Mapping[str, Any]]]
) -> list[Any]:
    """The diagnostics the pack reports for a stack of (type, name, urn, props)."""
    request = analyzer_pb2.AnalyzeStackRequest(
        resources=[
            analyzer_pb2.AnalyzerResource(type=t, name=name, urn=urn, properties=struct(props))
            for t, name, urn, props in resources
        ]
    )
    return list(stub.AnalyzeStack(request, timeout=20).diagnostics)


@contextmanager
def serve_pack() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    """Start the pack, yield a client of it, and stop it whatever happens."""
    with tempfile.TemporaryFile(mode="w+") as stderr:
        # Serving never dials the engine address, so it may point at nothing.
        server = subprocess.Popen(
            [str(PACK_PYTHON), "-u", "-m", "pulumi.policy", "127.0.0.1:1", str(PACK)],
            cwd=PACK,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert server.stdout is not None
            port = server.stdout.readline().strip()
            if not port.isdigit():
                server.kill()
                server.wait(timeout=10)
                stderr.seek(0)
                raise RuntimeError(
                    f"the policy pack did not start: printed {port!r}, stderr:\n{stderr.read()}"
                )
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT_S)
                yield analyzer_pb2_grpc.AnalyzerStub(channel)
        finally:
            if server.poll() is None:
                server.terminate()
                try:
                    server.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait(timeout=10)
            if server.stdout is not None:
                server.stdout.close()
