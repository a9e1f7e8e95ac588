"""The compiled plan: one compile per config, typed by kind, defaults filled in; the Scheduler runs it."""

import dataclasses
import random

import epp.scheduling.config
import pytest
from epp.scheduling import Scheduler, load_profile, parse_config
from epp.scheduling.config import compile_config
from epp.scheduling.plugins.filters.decode import DecodeFilter
from epp.scheduling.plugins.filters.label_selector import LabelSelectorFilter
from epp.scheduling.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.plugins.pickers.random_choice import RandomPicker
from epp.scheduling.plugins.profile_handlers.single import SingleProfileHandler
from epp.scheduling.plugins.scorers.prefix_cache import PrefixCacheScorer
from epp.scheduling.plugins.scorers.queue import QueueScorer

from tests.epp.scheduling.builders import endpoint, request

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
CONFIG = (
    HEADER
    + """
plugins:
- {type: queue-scorer}
- {name: nvlink, type: by-label-selector, parameters: {matchLabels: {backend: nvlink}}}
- {type: random-picker}
- {type: decode-filter}
- {type: prefix-cache-scorer, parameters: {blockSize: 16}}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 2.5}
  - {pluginRef: decode-filter}
  - {pluginRef: random-picker}
  - {pluginRef: nvlink}
  - {pluginRef: queue-scorer}
"""
)


def test_the_plan_sorts_each_profile_s_plugins_by_kind_keeping_their_order():
    [profile] = parse_config(CONFIG).plan.profiles
    assert [(f.name, f.plugin) for f in profile.filters] == [
        ("decode-filter", DecodeFilter),
        ("nvlink", LabelSelectorFilter),
    ]
    assert [(s.name, s.plugin, w) for s, w in profile.scorers] == [
        ("prefix-cache-scorer", PrefixCacheScorer, 2.5),
        ("queue-scorer", QueueScorer, 1.0),
    ]
    assert (profile.picker.name, profile.picker.plugin) == ("random-picker", RandomPicker)
    [scorer, _] = profile.scorers
    assert scorer[0].parameters.block_size == 16  # validated once, at compile time


def test_defaults_are_in_the_plan():
    plan = parse_config(HEADER + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: d}]\n").plan
    assert plan.handler.plugin is SingleProfileHandler
    [profile] = plan.profiles
    assert profile.picker.plugin is MaxScorePicker
    assert profile.picker.parameters.max_num_of_endpoints == 1


def test_the_plan_is_immutable():
    plan = parse_config(CONFIG).plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.profiles[0].picker = plan.profiles[0].picker  # type: ignore[misc]
    assert isinstance(plan.profiles, tuple)
    assert isinstance(plan.profiles[0].filters, tuple)


def test_a_config_compiles_once_from_parsing_to_the_running_scheduler(monkeypatch):
    calls = []
    compile_once = epp.scheduling.config.compile_config

    def counted(config):
        calls.append(config)
        return compile_once(config)

    monkeypatch.setattr(epp.scheduling.config, "compile_config", counted)
    config = parse_config(CONFIG)
    Scheduler.from_config(config, rng=random.Random(0))
    Scheduler.from_config(config, rng=random.Random(1))
    assert calls == [config]


def test_a_changed_copy_compiles_its_own_plan():
    config = load_profile("default")
    renamed = config.scheduling_profiles[0].model_copy(update={"name": "renamed"})
    changed = config.model_copy(update={"scheduling_profiles": [renamed]})
    assert [p.name for p in changed.plan.profiles] == ["renamed"]
    assert [p.name for p in config.plan.profiles] == ["default"]
    assert config.model_copy().plan is config.plan


def test_a_plugin_two_profiles_reference_is_one_instance():
    text = (
        HEADER
        + """
plugins: [{type: prefix-cache-scorer}, {name: handler, type: single-profile-handler}]
schedulingProfiles: [{name: a, plugins: [{pluginRef: prefix-cache-scorer}]}]
"""
    )
    plan = parse_config(text).plan
    [a] = plan.profiles
    both = dataclasses.replace(plan, profiles=(a, dataclasses.replace(a, name="b")))
    scheduler = Scheduler.from_plan(both, rng=random.Random(0))
    [(in_a, _)], [(in_b, _)] = scheduler.profiles["a"].scorers, scheduler.profiles["b"].scorers
    assert in_a is in_b
    assert scheduler.handler.name == "handler"


def test_the_scheduler_runs_the_plan_it_is_given():
    plan = compile_config(parse_config(CONFIG))
    scheduler = Scheduler.from_plan(plan, rng=random.Random(0))
    keep = endpoint("keep", labels={"backend": "nvlink", "llm-d.ai/role": "decode"})
    prefill = endpoint("prefill", labels={"backend": "nvlink", "llm-d.ai/role": "prefill"})
    other = endpoint("other", labels={"llm-d.ai/role": "decode"})
    result = scheduler.schedule(request(), [prefill, other, keep], explain=True)
    assert result.endpoint is keep
    assert set(result.scores[keep.address]) == {"prefix-cache-scorer", "queue-scorer"}
