"""``make preflight`` against recorded answers of Google, Hugging Face and Docker Hub (no network)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from components.config import ACCELERATORS, PlatformConfig, parse_platform_config
from preflight.__main__ import report
from preflight.checks import (
    COMPUTE,
    CONTAINER,
    CRM,
    DOCKER_HUB_AUTH,
    DOCKER_HUB_REGISTRY,
    HUGGING_FACE,
    QUOTA_METRICS,
    SERVICE_USAGE,
    Context,
    Finding,
    Response,
    run_checks,
)
from render import load_stack_config

GOOGLE_TOKEN = "ya29.recorded-google-token"
HF_TOKEN = "hf_recorded_token_never_printed"


def _stack(name: str, **changes: Any) -> PlatformConfig:
    _, config = load_stack_config(name)
    return parse_platform_config({**config["gke-llm-gateway:platform"], **changes})


class Recorded:
    """Answers by (method, URL prefix); an unexpected request fails the test (there is no network)."""

    def __init__(self, answers: Mapping[tuple[str, str], Response]) -> None:
        self.answers = dict(answers)
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, method: str, url: str, *, headers: Mapping[str, str] | None = None) -> Response:
        self.seen.append((method, url, dict(headers or {})))
        for (m, prefix), response in self.answers.items():
            if m == method and url.startswith(prefix):
                return response
        raise AssertionError(f"unrecorded request {method} {url}")


def _enabled(state: str = "ENABLED") -> Response:
    return Response(200, {"state": state})


def healthy_project(
    project: str, region: str, zone: str, quotas: list[dict[str, Any]]
) -> dict[Any, Response]:
    return {
        ("GET", f"{CRM}/projects/{project}"): Response(200, {"projectId": project, "state": "ACTIVE"}),
        ("GET", f"{SERVICE_USAGE}/projects/{project}/services/compute.googleapis.com"): _enabled("DISABLED"),
        ("GET", f"{SERVICE_USAGE}/projects/{project}/services/"): _enabled(),
        ("GET", f"{COMPUTE}/projects/{project}/regions/{region}"): Response(200, {"quotas": quotas}),
        ("GET", f"{CONTAINER}/projects/{project}/locations/{zone}/serverConfig"): Response(
            200,
            {
                "channels": [
                    {
                        "channel": "REGULAR",
                        "defaultVersion": "1.34.1-gke.3971000",
                        "validVersions": ["1.34.1-gke.3971000", "1.33.5-gke.2019000"],
                    },
                    {
                        "channel": "STABLE",
                        "defaultVersion": "1.33.5-gke.2019000",
                        "validVersions": ["1.33.5-gke.2019000", "1.33.4-gke.1000"],
                    },
                ]
            },
        ),
        ("GET", DOCKER_HUB_AUTH): Response(200, {"token": "registry-token"}),
        ("HEAD", f"{DOCKER_HUB_REGISTRY}/v2/vllm/"): Response(
            200, None, {"Docker-Content-Digest": "sha256:" + "ab" * 32}
        ),
        ("HEAD", f"{HUGGING_FACE}/"): Response(302),
    }


GPU_QUOTA = [{"metric": "NVIDIA_T4_GPUS", "limit": 4.0, "usage": 0.0}, {"metric": "CPUS", "limit": 24.0}]


def _run(config: PlatformConfig, answers: Mapping[Any, Response], hf: str | None = HF_TOKEN) -> list[Finding]:
    return run_checks(Context(config, Recorded(answers), GOOGLE_TOKEN, hf))


def _failed(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == "fail"]


def test_a_ready_project_passes_every_check() -> None:
    config = _stack("gpu")
    findings = _run(config, healthy_project(config.project, config.region, config.zone, GPU_QUOTA))

    assert _failed(findings) == []
    checks = {f.check for f in findings}
    assert checks == {"project", "api", "quota", "gke", "hugging face", "image"}
    assert any("compute.googleapis.com is disabled; `pulumi up` enables it" in f.message for f in findings)
    assert report(findings).endswith("all checks passed")


def test_a_new_project_without_gpu_quota_is_told_to_ask_for_it_or_use_spot() -> None:
    config = _stack("gpu")
    quota = [{"metric": "NVIDIA_T4_GPUS", "limit": 0.0, "usage": 0.0}]
    [failure] = _failed(_run(config, healthy_project(config.project, config.region, config.zone, quota)))

    assert failure.check == "quota"
    assert "NVIDIA_T4_GPUS has 0 free, the models need 2" in failure.message
    assert "quota increase for NVIDIA_T4_GPUS in us-central1" in failure.fix
    assert "spot: true" in failure.fix


def test_a_spot_pool_is_checked_against_the_preemptible_quota() -> None:
    config = _stack("tpu")
    pools = [p.model_copy(update={"spot": True}) if p.accelerator else p for p in config.node_pools]
    spot = config.model_copy(update={"node_pools": pools})
    quota = [
        {"metric": "PREEMPTIBLE_TPU_V6E", "limit": 8.0, "usage": 0.0},
        {"metric": "TPU_V6E", "limit": 0.0},
    ]

    findings = _run(spot, healthy_project(spot.project, spot.region, spot.zone, quota))

    assert _failed(findings) == []
    assert any("PREEMPTIBLE_TPU_V6E has 8 free" in f.message for f in findings)


def test_an_accelerator_the_region_does_not_list_is_a_warning_naming_where_to_look() -> None:
    config = _stack("tpu")
    findings = _run(config, healthy_project(config.project, config.region, config.zone, []))

    [warning] = [f for f in findings if f.status == "warn"]
    assert "lists no TPU_V6E quota" in warning.message


def test_a_token_without_the_licence_is_told_where_to_accept_it_and_never_printed() -> None:
    config = _stack("gpu")
    answers = healthy_project(config.project, config.region, config.zone, GPU_QUOTA)
    answers[("HEAD", f"{HUGGING_FACE}/google/gemma-2b-it/")] = Response(403)
    answers = {key: answers[key] for key in sorted(answers, key=lambda k: -len(k[1]))}  # most specific first

    findings = _run(config, answers)
    [failure] = _failed(findings)

    assert failure.check == "hugging face"
    assert "accept the licence at https://huggingface.co/google/gemma-2b-it" in failure.fix
    assert HF_TOKEN not in report(findings)
    assert GOOGLE_TOKEN not in report(findings)


def test_no_token_for_a_gated_model_says_how_to_give_one() -> None:
    config = _stack("gpu")
    [failure] = _failed(
        _run(config, healthy_project(config.project, config.region, config.zone, GPU_QUOTA), hf=None)
    )

    assert failure.message == "models[0] google/gemma-2b-it is gated and no token was given"


def test_a_tag_that_does_not_exist_is_reported_with_where_to_find_tags() -> None:
    config = _stack("tpu")
    answers = healthy_project(config.project, config.region, config.zone, [{"metric": "TPU_V6E", "limit": 4}])
    answers[("HEAD", f"{DOCKER_HUB_REGISTRY}/v2/vllm/vllm-tpu/manifests/v0.32.0")] = Response(404)
    answers = {key: answers[key] for key in sorted(answers, key=lambda k: -len(k[1]))}

    [failure] = _failed(_run(config, answers))

    assert failure.message == "vllm/vllm-tpu:v0.32.0: the registry answers HTTP 404 for the tag"
    assert "hub.docker.com/r/vllm/vllm-tpu/tags" in failure.fix


def test_a_channel_without_a_qualifying_version_fails_naming_the_field() -> None:
    config = _stack("gpu", releaseChannel="STABLE")
    [failure] = _failed(_run(config, healthy_project(config.project, config.region, config.zone, GPU_QUOTA)))

    assert failure.check == "gke"
    assert failure.message.startswith(
        "platform.releaseChannel: STABLE offers no GKE version >= 1.34.0-gke.1626000"
    )


def test_an_unreadable_project_and_a_disabled_bootstrap_api_say_what_to_run() -> None:
    config = _stack("tpu")
    answers = healthy_project(config.project, config.region, config.zone, [{"metric": "TPU_V6E", "limit": 4}])
    answers[("GET", f"{CRM}/projects/{config.project}")] = Response(403, {"error": {"message": "denied"}})
    answers[("GET", f"{SERVICE_USAGE}/projects/{config.project}/services/serviceusage.googleapis.com")] = (
        _enabled("DISABLED")
    )
    answers = {key: answers[key] for key in sorted(answers, key=lambda k: -len(k[1]))}

    failures = _failed(_run(config, answers))

    assert [f.check for f in failures] == ["project", "api"]
    assert "HTTP 403: denied" in failures[0].message
    assert failures[1].fix == f"gcloud services enable serviceusage.googleapis.com --project {config.project}"


def test_google_calls_carry_the_token_and_nothing_else_does() -> None:
    config = _stack("gpu")
    http = Recorded(healthy_project(config.project, config.region, config.zone, GPU_QUOTA))
    run_checks(Context(config, http, GOOGLE_TOKEN, HF_TOKEN))

    for _, url, headers in http.seen:
        google = url.startswith("https://") and "googleapis.com" in url.split("/")[2]
        assert (headers.get("Authorization") == f"Bearer {GOOGLE_TOKEN}") is google, url


@pytest.mark.parametrize("accelerator", sorted(ACCELERATORS))
def test_every_accelerator_has_a_quota_metric(accelerator: str) -> None:
    assert QUOTA_METRICS[accelerator]


@pytest.mark.parametrize(
    ("image", "manifest"),
    [
        ("vllm/vllm-tpu:v0.32.0", "vllm/vllm-tpu/manifests/v0.32.0"),
        ("vllm/vllm-tpu@sha256:" + "1" * 64, "vllm/vllm-tpu/manifests/sha256:" + "1" * 64),
        ("vllm/vllm-tpu:v0.32.0@sha256:" + "2" * 64, "vllm/vllm-tpu/manifests/sha256:" + "2" * 64),
        ("ubuntu:24.04", "library/ubuntu/manifests/24.04"),
    ],
)
def test_the_manifest_asked_for_is_the_tag_or_the_pinned_digest(image: str, manifest: str) -> None:
    config = _stack("tpu")
    models = [m.model_copy(update={"image": image}) for m in config.models]
    http = Recorded(
        healthy_project(config.project, config.region, config.zone, [{"metric": "TPU_V6E", "limit": 4}])
    )
    http.answers[("HEAD", f"{DOCKER_HUB_REGISTRY}/v2/library/")] = Response(200)

    findings = run_checks(Context(config.model_copy(update={"models": models}), http, GOOGLE_TOKEN, None))

    assert _failed(findings) == []
    assert [url for method, url, _ in http.seen if method == "HEAD"] == [
        f"{DOCKER_HUB_REGISTRY}/v2/{manifest}"
    ]


def test_a_disabled_kubernetes_engine_api_fails_because_the_preview_asks_gke_for_versions() -> None:
    config = _stack("gpu")
    answers = healthy_project(config.project, config.region, config.zone, GPU_QUOTA)
    api = f"{SERVICE_USAGE}/projects/{config.project}/services/container.googleapis.com"
    answers = {("GET", api): _enabled("DISABLED"), **answers}

    [failure] = _failed(_run(config, answers))

    assert failure.message == "container.googleapis.com is disabled"
    assert failure.fix == f"gcloud services enable container.googleapis.com --project {config.project}"
