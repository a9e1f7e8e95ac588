"""A bad EndpointPickerConfig in the stack fails the preview, with the EPP's own words, before any
resource is registered; a good one reaches the EPP's ConfigMap as the very text that was checked."""

from __future__ import annotations

from typing import Any

import pytest
from epp.scheduling.config import parse_config
from epp.scheduling.errors import ConfigError as PickerConfigError

from components.config import ConfigError, endpoint_picker_yaml
from render import render_stack
from render.harness import StackRun
from tests.infra.conftest import DEPLOYMENT, named, pod_spec

CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
API_VERSION = "inference.networking.x-k8s.io/v1alpha1"


def _config(plugins: list[dict[str, Any]], refs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "EndpointPickerConfig",
        "plugins": plugins,
        "schedulingProfiles": [{"name": "default", "plugins": refs}],
        **extra,
    }


BAD = {
    "a plugin type the EPP does not have": _config(
        [{"type": "queue-scorer"}, {"type": "prefix-cache-scorerr"}],
        [{"pluginRef": "queue-scorer"}],
    ),
    "a profile naming a plugin that is not configured": _config(
        [{"type": "queue-scorer"}], [{"pluginRef": "kv-cache-utilization-scorer"}]
    ),
    "a weight on a picker": _config(
        [{"type": "queue-scorer"}, {"type": "max-score-picker"}],
        [{"pluginRef": "queue-scorer"}, {"pluginRef": "max-score-picker", "weight": 2}],
    ),
    "an unknown top-level field": _config(
        [{"type": "queue-scorer"}], [{"pluginRef": "queue-scorer"}], schedulingProfile="default"
    ),
    "a saturation threshold out of range": _config(
        [{"type": "queue-scorer"}],
        [{"pluginRef": "queue-scorer"}],
        saturationDetector={"kvCacheUtilThreshold": 1.5},
    ),
    "no scheduling profile": {"apiVersion": API_VERSION, "plugins": [{"type": "queue-scorer"}]},
}


def _epp_says(config: dict[str, Any]) -> str:
    """What the EPP itself reports for this config (the message its pod would crash-loop on)."""
    with pytest.raises(PickerConfigError) as raised:
        parse_config(endpoint_picker_yaml(config))
    return str(raised.value)


@pytest.mark.parametrize("case", list(BAD))
def test_a_config_the_epp_would_refuse_fails_the_preview_with_the_epps_message(case: str) -> None:
    config = BAD[case]

    run = render_stack("gpu", {"epp": {"config": config}}, check=False)

    assert isinstance(run.error, ConfigError)
    assert run.error.errors == [f"platform.epp.config: {_epp_says(config)}"]
    assert run.resources == []


def test_the_config_map_holds_the_text_the_epp_parser_accepted() -> None:
    config = _config(
        [{"type": "queue-scorer"}, {"name": "prefix", "type": "prefix-cache-scorer"}],
        [{"pluginRef": "queue-scorer", "weight": 2}, {"pluginRef": "prefix", "weight": 3}],
    )

    run = render_stack("tpu", {"epp": {"config": config}})

    text = named(run, CONFIG_MAP, "qwen-pool-epp-config").props["data"]["epp.yaml"]
    assert text == endpoint_picker_yaml(config)
    assert [p.plugin_name for p in parse_config(text).plugins] == ["queue-scorer", "prefix"]


def test_a_profile_the_epp_does_not_ship_is_refused_by_name() -> None:
    run = render_stack("gpu", {"epp": {"profile": "fastest"}}, check=False)

    assert isinstance(run.error, ConfigError)
    [message] = run.error.errors
    assert message.startswith("platform.epp.profile: 'fastest' is not allowed")
    assert "proxy-performance" in message


def _epp_args(run: StackRun) -> list[str]:
    [container] = pod_spec(named(run, DEPLOYMENT, "gemma-pool-epp"))["containers"]
    return list(container["args"])


def test_answer_ends_are_followed_only_when_the_stack_asks() -> None:
    assert "--follow-answers-up-to" not in _epp_args(render_stack("gpu"))
    args = _epp_args(render_stack("gpu", {"epp": {"followAnswersUpTo": 32}}))
    assert args[args.index("--follow-answers-up-to") + 1] == "32"
    run = render_stack("gpu", {"epp": {"followAnswersUpTo": -1}}, check=False)
    assert isinstance(run.error, ConfigError)
    assert run.error.errors[0].startswith("platform.epp.followAnswersUpTo")
