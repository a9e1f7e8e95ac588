"""Fixtures for the policy tests: the policy pack, served from its own virtualenv."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pulumi.runtime.proto import analyzer_pb2_grpc

from tests.policy.pack_server import MISSING_VENV, PACK_PYTHON, serve_pack


@pytest.fixture(scope="session")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    """A gRPC client of the running policy pack (skips when policy/.venv was not built)."""
    if not PACK_PYTHON.exists():
        pytest.skip(MISSING_VENV)
    with serve_pack() as stub:
        yield stub
