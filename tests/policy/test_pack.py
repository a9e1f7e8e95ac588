"""The policy pack served the way the Pulumi CLI serves it, in its own virtualenv, answering over gRPC.

A pack that fails to import, to construct or to report is caught here without a Pulumi CLI.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from google.protobuf import empty_pb2
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
from tests.policy.pack_server import MISSING_VENV, PACK, PACK_PYTHON, analyze, analyze_stack

MANDATORY = analyzer_pb2.MANDATORY
ADVISORY = analyzer_pb2.ADVISORY
# What Pulumi sends for a string it cannot know during preview, e.g. the digest of an image not yet built.
UNKNOWN_STRING = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
CLUSTER = "gcp:container/cluster:Cluster"


def test_the_pack_announces_every_rule_as_mandatory(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=20)

    assert info.name == "gke-llm-gateway"
    assert sorted(policy.name for policy in info.policies) == [
        "containers-request-cpu-and-memory",
        "containers-run-as-non-root",
        "images-pinned-by-digest",
        "inference-pools-have-health-checks",
        "prod-clusters-have-deletion-protection",
        "public-gateways-check-api-keys",
    ]
    assert {policy.enforcementLevel for policy in info.policies} == {MANDATORY}


def test_the_pack_rejects_a_root_deployment_with_a_tagged_image(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    resource_type, props = deployment(
        pod_spec(container(image="vllm/vllm-openai:latest", security={"runAsUser": 0}))
    )

    diagnostics = analyze(analyzer, resource_type, "vllm", urn("gpu", resource_type, "vllm"), props)

    assert {(d.policyName, d.enforcementLevel) for d in diagnostics} == {
        ("containers-run-as-non-root", MANDATORY),
        ("images-pinned-by-digest", MANDATORY),
    }


def test_the_pack_lets_a_compliant_deployment_through(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    resource_type, props = deployment(pod_spec(container(security={"runAsUser": 1000, "runAsNonRoot": True})))

    assert analyze(analyzer, resource_type, "epp", urn("gpu", resource_type, "epp"), props) == []


def test_an_image_digest_unknown_during_preview_is_deferred_not_rejected(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    resource_type, props = deployment(pod_spec(container(image=UNKNOWN_STRING)))

    [diagnostic] = analyze(analyzer, resource_type, "epp", urn("gpu", resource_type, "epp"), props)

    assert diagnostic.policyName == "images-pinned-by-digest"
    assert diagnostic.enforcementLevel == ADVISORY
    assert "can't run policy" in diagnostic.message


def test_the_pack_reads_the_stack_name_from_the_urn(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    cluster = {"name": "llm-gateway", "location": "us-central1-a"}

    on_prod = analyze(analyzer, CLUSTER, "cluster", urn("gpu-prod", CLUSTER, "cluster"), cluster)
    on_dev = analyze(analyzer, CLUSTER, "cluster", urn("gpu", CLUSTER, "cluster"), cluster)

    assert [d.policyName for d in on_prod] == ["prod-clusters-have-deletion-protection"]
    assert on_dev == []


def test_the_pack_rejects_a_stack_whose_pool_has_no_health_check(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    def resource(
        resource_type: str, name: str, props: dict[str, object]
    ) -> tuple[str, str, str, dict[str, object]]:
        return resource_type, name, urn("tpu", resource_type, name), props

    checked = [
        resource(POOL_TYPE, "qwen-pool", inference_pool("qwen")),
        resource(HEALTH_CHECK_TYPE, "qwen-health", health_check_policy("qwen")),
    ]
    unchecked = [resource(POOL_TYPE, "phi3-pool", inference_pool("phi3"))]

    assert analyze_stack(analyzer, checked) == []
    [diagnostic] = analyze_stack(analyzer, unchecked)
    assert diagnostic.policyName == "inference-pools-have-health-checks"
    assert diagnostic.urn == urn("tpu", POOL_TYPE, "phi3-pool")
    assert "InferencePool default/phi3" in diagnostic.message


@pytest.mark.skipif(not PACK_PYTHON.exists(), reason=MISSING_VENV)
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
    assert len(json.loads(result.stdout)) == 6
