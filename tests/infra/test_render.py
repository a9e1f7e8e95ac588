"""``python -m render <stack>`` prints the stack's Kubernetes objects for a reviewer."""

from __future__ import annotations

import pytest
import yaml

from render.__main__ import main


def test_render_prints_every_kubernetes_object_of_the_tpu_stack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tpu"]) == 0

    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = [d["kind"] for d in documents]
    assert kinds[0] == "Namespace"
    assert "CustomResourceDefinition" not in kinds  # GKE ships it (inferencePoolCrd: gke-managed)
    assert kinds.count("InferencePool") == 2
    assert kinds.count("Deployment") == 5
    assert {"Gateway", "HTTPRoute", "HealthCheckPolicy", "GCPBackendPolicy", "GCPRoutingExtension"} <= set(
        kinds
    )
    qwen = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm-qwen")
    assert (
        qwen["spec"]["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"]
        == "tpu-v6e-slice"
    )


def test_render_of_an_unknown_stack_says_which_stacks_exist(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["staging"]) == 2

    assert "Pulumi.staging.yaml" in capsys.readouterr().err
