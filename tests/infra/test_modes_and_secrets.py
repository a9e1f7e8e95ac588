"""Routing modes, scheduling profiles, scale-to-zero and the Hugging Face token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from render import StackRun, kubernetes_objects, load_stack_config, render_stack
from tests.infra.conftest import DEPLOYMENT, HEALTH_CHECK_POLICY, HTTP_ROUTE, POOL, named, of_type, pod_spec

HF_TOKEN = "hf_unit_test_token_do_not_leak"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
PROFILES = Path(__file__).resolve().parents[2] / "epp" / "src" / "epp" / "profiles"


@pytest.fixture(scope="module")
def unified() -> StackRun:
    return render_stack("gpu", {"routingMode": "unified-pool", "epp": {"profile": "proxy-performance"}})


@pytest.fixture(scope="module")
def with_token() -> StackRun:
    return render_stack("gpu", secrets={"hfToken": HF_TOKEN})


def test_unified_mode_renders_one_pool_for_every_model_behind_the_same_front_door(unified: StackRun) -> None:
    [pool] = of_type(unified, POOL)
    [route] = of_type(unified, HTTP_ROUTE)
    selector = pool.props["spec"]["selector"]["matchLabels"]

    for model in ("gemma", "phi3"):
        labels = named(unified, DEPLOYMENT, f"vllm-{model}").props["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
    [rule] = route.props["spec"]["rules"]
    assert rule["matches"] == [
        {"path": {"type": "Exact", "value": path}}
        for path in ("/v1/completions", "/v1/chat/completions")
    ]
    assert rule["backendRefs"][0]["name"] == pool.props["metadata"]["name"]
    assert sorted(
        d.props["metadata"]["name"] for d in of_type(unified, DEPLOYMENT) if "vllm-" not in d.name
    ) == ["all-models-pool-epp", "body-based-router"]
    [extension] = [r for r in unified.resources if "GCPRoutingExtension" in r.type]
    assert extension.props["spec"]["extensionChains"][0]["extensions"][0]["backendRef"]["name"] == (
        "body-based-router"
    )
    assert sorted(h.props["metadata"]["name"] for h in of_type(unified, HEALTH_CHECK_POLICY)) == [
        "all-models-pool-epp-health",
        "all-models-pool-health",
        "body-based-router-health",
    ]
    assert set(unified.outputs["servedModels"]) == {"google/gemma-2b-it", "microsoft/Phi-3-mini-4k-instruct"}


def test_the_chosen_profile_is_what_the_epp_reads(unified: StackRun, gpu: StackRun) -> None:
    chosen = named(unified, CONFIG_MAP, "all-models-pool-epp-config").props["data"]["epp.yaml"]
    default = named(gpu, CONFIG_MAP, "gemma-pool-epp-config").props["data"]["epp.yaml"]

    assert chosen == (PROFILES / "proxy-performance.yaml").read_text(encoding="utf-8")
    assert chosen != default
    assert yaml.safe_load(chosen)["kind"] == "EndpointPickerConfig"


def test_a_full_endpoint_picker_config_replaces_the_profile() -> None:
    config: dict[str, Any] = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [{"type": "queue-scorer"}, {"type": "max-score-picker"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "queue-scorer"}]}],
    }
    run = render_stack("tpu", {"epp": {"config": config}})

    data = named(run, CONFIG_MAP, "qwen-pool-epp-config").props["data"]
    assert yaml.safe_load(data["epp.yaml"]) == config


def test_scaling_a_model_to_zero_keeps_its_route_and_lets_its_nodes_go() -> None:
    run = render_stack("tpu", {"models": [{**m, "replicas": 0} for m in _models("tpu")]})

    for model in ("qwen", "phi3"):
        assert named(run, DEPLOYMENT, f"vllm-{model}").props["spec"]["replicas"] == 0
    assert len(of_type(run, HTTP_ROUTE)) == 2
    [v6e] = [p for p in of_type(run, "gcp:container/nodePool:NodePool") if p.props["name"] == "v6e"]
    assert v6e.props["autoscaling"]["minNodeCount"] == 0


def _models(stack: str) -> list[dict[str, Any]]:
    _, config = load_stack_config(stack)
    models: list[dict[str, Any]] = config["gke-llm-gateway:platform"]["models"]
    return models


def test_without_a_token_no_secret_is_created_and_no_pod_expects_one(tpu: StackRun) -> None:
    # The tpu stack serves no gated model, so it runs without hfToken (the gpu stack's gemma may not).
    secrets = [o["metadata"]["name"] for o in kubernetes_objects(tpu.resources) if o["kind"] == "Secret"]
    # The API keys, and each pool's EPP replicas' peer key (epp.peers): no Hugging Face token.
    assert sorted(secrets) == ["api-keys", "phi3-pool-epp-peers", "qwen-pool-epp-peers"]
    [container] = pod_spec(named(tpu, DEPLOYMENT, "vllm-qwen"))["containers"]
    assert "HF_TOKEN" not in {env["name"] for env in container["env"]}


def test_the_hugging_face_token_only_travels_as_a_secret(with_token: StackRun) -> None:
    [secret] = [
        r
        for r in with_token.resources
        if r.type == "kubernetes:core/v1:Secret" and r.props["metadata"]["name"] == "hf-token"
    ]
    [container] = pod_spec(named(with_token, DEPLOYMENT, "vllm-gemma"))["containers"]
    [env] = [e for e in container["env"] if e["name"] == "HF_TOKEN"]

    assert any("stringData.token".startswith(path) for path in secret.secret_paths)
    assert secret.props["stringData"]["token"] == HF_TOKEN
    assert env["valueFrom"]["secretKeyRef"] == {"name": secret.props["metadata"]["name"], "key": "token"}
    elsewhere = [r for r in with_token.resources if r is not secret and HF_TOKEN in repr(r.props)]
    assert elsewhere == []
    rendered = yaml.safe_dump_all(kubernetes_objects(with_token.resources, mask_secrets=True))
    assert HF_TOKEN not in rendered


def test_the_kubeconfig_output_is_secret(stack_run: StackRun) -> None:
    assert "kubeconfig" in stack_run.secret_outputs
    [provider] = [r for r in stack_run.resources if r.type == "pulumi:providers:kubernetes"]
    assert "kubeconfig" in provider.secret_paths


def test_the_unified_pool_epp_knows_every_model_it_is_configured_for() -> None:
    run = render_stack("gpu", {"routingMode": "unified-pool"})
    [deployment] = [r for r in run.resources if r.type == DEPLOYMENT and r.name.endswith("-epp")]
    args = deployment.props["spec"]["template"]["spec"]["containers"][0]["args"]
    models = args[args.index("--pool-models") + 1]
    assert models.split(",") == ["google/gemma-2b-it", "microsoft/Phi-3-mini-4k-instruct"]
