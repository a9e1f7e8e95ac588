"""A bad stack file fails before anything is registered, with an error naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components.config import ConfigError
from render import load_stack_config, render_stack


def _platform(stack: str) -> dict[str, Any]:
    _, config = load_stack_config(stack)
    platform: dict[str, Any] = copy.deepcopy(config["gke-llm-gateway:platform"])
    return platform


def _with_model(stack: str, index: int, **changes: Any) -> dict[str, Any]:
    models = _platform(stack)["models"]
    models[index].update(changes)
    return {"models": models}


TPU_IMAGE = "vllm/vllm-tpu@sha256:" + "1" * 64

CASES = {
    "a TPU model on the gpu stack": (
        "gpu",
        _with_model("gpu", 1, accelerator="tpu-v6e-slice", image=TPU_IMAGE),
        "platform.models[1].accelerator",
        "not provided by any node pool",
    ),
    "two models served under one name": (
        "gpu",
        _with_model("gpu", 1, servedName="google/gemma-2b-it"),
        "platform.models[1].servedName",
        "already used by models[0]",
    ),
    "a negative replica count": (
        "tpu",
        _with_model("tpu", 0, replicas=-1),
        "platform.models[0].replicas",
        "greater than or equal to 0",
    ),
    "an accelerator nobody knows": (
        "gpu",
        _with_model("gpu", 0, accelerator="nvidia-rtx-9000"),
        "platform.models[0].accelerator",
        "'nvidia-rtx-9000' is not allowed",
    ),
    "a served name that cannot travel in a header": (
        "tpu",
        _with_model("tpu", 1, servedName="phi 3\r\nX-Injected: yes"),
        "platform.models[1].servedName",
        "not a valid HTTP header value",
    ),
    "a served name with a trailing newline": (
        "gpu",
        _with_model("gpu", 0, servedName="google/gemma-2b-it\n"),
        "platform.models[0].servedName",
        "not a valid HTTP header value",
    ),
    "a pinned image with a trailing newline": (
        "gpu",
        _with_model("gpu", 0, image="vllm/vllm-openai@sha256:" + "a" * 64 + "\n"),
        "platform.models[0].image",
        "is neither name:tag",
    ),
    "a model image without a tag or a digest": (
        "tpu",
        _with_model("tpu", 1, image="vllm/vllm-tpu"),
        "platform.models[1].image",
        "is neither name:tag (resolved to its digest at preview) nor pinned by digest",
    ),
    "a Spot pool that also names a reservation": (
        "gpu",
        {
            "nodePools": [
                _platform("gpu")["nodePools"][0],
                {**_platform("gpu")["nodePools"][1], "spot": True, "reservation": "t4-reserved"},
            ]
        },
        "platform.nodePools[1].reservation",
        "Spot VMs do not consume reservations",
    ),
    "a misspelt field": (
        "gpu",
        {"routingMod": "unified-pool"},
        "platform.routingMod",
        "unknown field",
    ),
    "an InferencePool CRD source nobody knows": (
        "tpu",
        {"inferencePoolCrd": "helm"},
        "platform.inferencePoolCrd",
        "'helm' is not allowed; input should be 'gke-managed' or 'install'",
    ),
    "a model image on a moving tag": (
        "gpu",
        _with_model("gpu", 0, image="vllm/vllm-openai:latest"),
        "platform.models[0].image",
        "the tag 'latest' names no release",
    ),
    "an autoscaler floor above its ceiling": (
        "tpu",
        {
            "nodePools": [
                _platform("tpu")["nodePools"][0],
                {**_platform("tpu")["nodePools"][1], "minNodes": 4},
            ]
        },
        "platform.nodePools[1]",
        "minNodes (4) is greater than maxNodes (3)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_invalid_stack_config_names_the_field_and_registers_nothing(case: str) -> None:
    stack, overrides, field, problem = CASES[case]

    run = render_stack(stack, overrides, check=False)

    assert isinstance(run.error, ConfigError)
    [message] = run.error.errors
    assert message.startswith(f"{field}: ")
    assert problem in message
    assert run.resources == []


def test_run_stack_raises_the_config_error_itself() -> None:
    with pytest.raises(ConfigError, match=r"platform\.models\[0\]\.replicas"):
        render_stack("gpu", _with_model("gpu", 0, replicas=-2))


def test_an_unknown_stack_is_reported_with_the_stacks_that_exist() -> None:
    with pytest.raises(FileNotFoundError, match=r"no stack file Pulumi\.prod\.yaml .*gpu, tpu"):
        render_stack("prod")
