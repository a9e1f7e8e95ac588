"""The policy pack served the way the Pulumi CLI serves it, in its own virtualenv, answering over gRPC.

The CLI starts a Python pack as `<venv>/bin/python -u -m pulumi.policy <engine> <pack dir>`, reads the
port it prints, then asks it to analyze each resource and finally the whole stack. These tests do the
same, so a pack that fails to import, to construct or to report is caught without a Pulumi CLI.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from tests.policy.builders import (
    HEALTH_CHECK_TYPE,
    POOL_TYPE,
    container,
    deployment,
    health_check_policy,
    inference_pool,
    pod_spec,
    urn,
)

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / "policy"
PACK_PYTHON = PACK / ".venv" / "bin" / "python"
MANDATORY = analyzer_pb2.MANDATORY
ADVISORY = analyzer_pb2.ADVISORY
# What Pulumi sends for a string it cannot know during preview, e.g. the digest of an image not yet built.
UNKNOWN_STRING = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

pytestmark = pytest.mark.skipif(
    not PACK_PYTHON.exists(),
    reason="policy/.venv is missing: build the policy pack's virtualenv with `make policy-venv`",
)


def _struct(props: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(props)
    return message


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    # Serving never dials the engine address, so it may point at nothing.
    server = subprocess.Popen(
        [str(PACK_PYTHON), "-u", "-m", "pulumi.policy", "127.0.0.1:1", str(PACK)],
        cwd=PACK,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port_line = server.stdout.readline().strip()
        if not port_line.isdigit():
            server.kill()
            _, stderr = server.communicate(timeout=10)
            pytest.fail(f"the policy pack did not start: printed {port_line!r}, stderr:\n{stderr}")
        with grpc.insecure_channel(f"127.0.0.1:{port_line}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        for stream in (server.stdout, server.stderr):
            if stream is not None:
                stream.close()


def _analyze(
    stub: analyzer_pb2_grpc.AnalyzerStub, stack: str, resource_type: str, props: dict[str, Any]
) -> Any:
    name = props.get("metadata", {}).get("name", "resource")
    request = analyzer_pb2.AnalyzeRequest(
        type=resource_type, properties=_struct(props), urn=urn(stack, resource_type, name), name=name
    )
    return stub.Analyze(request, timeout=20)


def test_the_pack_announces_every_rule_as_mandatory(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=20)

    assert info.name == "gke-llm-gateway"
    assert sorted(policy.name for policy in info.policies) == [
        "containers-request-cpu-and-memory",
        "containers-run-as-non-root",
        "images-pinned-by-digest",
        "inference-pools-have-health-checks",
        "prod-clusters-have-deletion-protection",
    ]
    assert {policy.enforcementLevel for policy in info.policies} == {MANDATORY}


def test_the_pack_rejects_a_root_deployment_with_a_tagged_image(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    spec = pod_spec(container(image="vllm/vllm-openai:latest", security={"runAsUser": 0}))

    response = _analyze(analyzer, "gpu", *deployment(spec))

    reported = {(d.policyName, d.enforcementLevel) for d in response.diagnostics}
    assert reported == {
        ("containers-run-as-non-root", MANDATORY),
        ("images-pinned-by-digest", MANDATORY),
    }


def test_the_pack_lets_a_compliant_deployment_through(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    spec = pod_spec(container(security={"runAsUser": 1000, "runAsNonRoot": True}))

    assert list(_analyze(analyzer, "gpu", *deployment(spec)).diagnostics) == []


def test_an_image_digest_unknown_during_preview_is_deferred_not_rejected(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    spec = pod_spec(container(image=UNKNOWN_STRING))

    response = _analyze(analyzer, "gpu", *deployment(spec))

    [diagnostic] = response.diagnostics
    assert diagnostic.policyName == "images-pinned-by-digest"
    assert diagnostic.enforcementLevel == ADVISORY
    assert "can't run policy" in diagnostic.message


def test_the_pack_reads_the_stack_name_from_the_urn(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    cluster = {"name": "llm-gateway", "location": "us-central1-a", "metadata": {"name": "cluster"}}

    on_prod = _analyze(analyzer, "gpu-prod", "gcp:container/cluster:Cluster", cluster)
    on_dev = _analyze(analyzer, "gpu", "gcp:container/cluster:Cluster", cluster)

    assert [d.policyName for d in on_prod.diagnostics] == ["prod-clusters-have-deletion-protection"]
    assert list(on_dev.diagnostics) == []


def test_the_pack_rejects_a_stack_whose_pool_has_no_health_check(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    def resource(resource_type: str, name: str, props: dict[str, Any]) -> Any:
        return analyzer_pb2.AnalyzerResource(
            type=resource_type, properties=_struct(props), urn=urn("tpu", resource_type, name), name=name
        )

    checked = analyzer_pb2.AnalyzeStackRequest(
        resources=[
            resource(POOL_TYPE, "qwen-pool", inference_pool("qwen")),
            resource(HEALTH_CHECK_TYPE, "qwen-health", health_check_policy("qwen")),
        ]
    )
    unchecked = analyzer_pb2.AnalyzeStackRequest(
        resources=[resource(POOL_TYPE, "phi3-pool", inference_pool("phi3"))]
    )

    assert list(analyzer.AnalyzeStack(checked, timeout=20).diagnostics) == []
    [diagnostic] = analyzer.AnalyzeStack(unchecked, timeout=20).diagnostics
    assert diagnostic.policyName == "inference-pools-have-health-checks"
    assert diagnostic.urn == urn("tpu", POOL_TYPE, "phi3-pool")
    assert "InferencePool default/phi3" in diagnostic.message


def test_the_pack_module_imports_in_its_venv_without_serving() -> None:
    probe = (
        "import json, runpy; "
        f"pack = runpy.run_path({str(PACK)!r}, run_name='probe'); "
        "print(json.dumps([p.name for p in pack['build_policies']()]))"
    )
    result = subprocess.run(
        [str(PACK_PYTHON), "-c", probe], cwd=PACK, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 5
