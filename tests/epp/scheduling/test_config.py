import random

import pytest
from epp.scheduling import ConfigError, EndpointPickerConfig, Scheduler, load_config, parse_config

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
PROFILE = "schedulingProfiles: [{name: default, plugins: [{pluginRef: prefix}]}]\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        Scheduler.from_config(parse_config(text), rng=random.Random(0))
    return str(caught.value)


def test_an_upstream_style_config_parses_with_defaults_filled_in():
    config = parse_config(
        HEADER
        + """
plugins:
- type: prefix-cache-scorer
  parameters: {blockSize: 32}
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: queue-scorer
"""
    )
    assert [p.plugin_name for p in config.plugins] == ["prefix-cache-scorer", "queue-scorer"]
    assert [r.weight for r in config.scheduling_profiles[0].plugins] == [3, None]
    assert config.saturation_detector.queue_depth_threshold == 5
    profile = Scheduler.from_config(config).profiles["default"]
    assert [w for _, w in profile.scorers] == [3.0, 1.0]  # an unset weight counts as 1


def test_a_bad_parameter_names_the_plugin_and_the_field():
    text = (
        HEADER
        + "plugins: [{name: prefix, type: prefix-cache-scorer, parameters: {blockSize: 0}}]\n"
        + PROFILE
    )
    assert error_of(text) == "plugin 'prefix': parameter 'blockSize': must be a positive integer, got 0"


def test_an_unknown_plugin_type_names_the_plugin_and_lists_the_known_types():
    message = error_of(HEADER + "plugins: [{name: prefix, type: prefix-scorer}]\n" + PROFILE)
    assert message.startswith(
        "plugin 'prefix': field 'type': unknown plugin type 'prefix-scorer' (known types: "
    )
    assert "prefix-cache-scorer" in message


def test_a_profile_referencing_an_unknown_plugin_is_rejected():
    text = HEADER + "plugins: [{name: queue, type: queue-scorer}]\n" + PROFILE
    assert (
        error_of(text)
        == "scheduling profile 'default': pluginRef 'prefix': no plugin has this name (plugins: queue)"
    )


def test_two_pickers_in_one_profile_are_rejected():
    text = (
        HEADER
        + """
plugins: [{type: max-score-picker}, {type: random-picker}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: max-score-picker}, {pluginRef: random-picker}]}]
"""
    )
    assert (
        error_of(text)
        == "scheduling profile 'default': more than one picker ('max-score-picker', 'random-picker')"
    )


def test_a_weight_on_a_filter_or_picker_is_rejected():
    text = (
        HEADER
        + """
plugins: [{type: decode-filter}]
schedulingProfiles: [{name: default, plugins: [{pluginRef: decode-filter, weight: 2}]}]
"""
    )
    assert error_of(text) == (
        "scheduling profile 'default': pluginRef 'decode-filter': field 'weight': only scorers take a weight"
    )


def test_a_negative_weight_is_rejected_with_its_path():
    text = HEADER + "plugins: [{name: prefix, type: prefix-cache-scorer}]\n"
    text += "schedulingProfiles: [{name: default, plugins: [{pluginRef: prefix, weight: -1}]}]\n"
    assert error_of(text) == (
        "field 'schedulingProfiles[0].plugins[0].weight': must be a non-negative number, got -1"
    )


def test_two_plugins_with_one_name_are_rejected():
    text = (
        HEADER + "plugins: [{name: prefix, type: prefix-cache-scorer}, {name: prefix, type: queue-scorer}]\n"
    )
    assert error_of(text + PROFILE) == "plugin 'prefix': name used by more than one plugin"


def test_several_profiles_need_a_handler_that_runs_several():
    profiles = "schedulingProfiles: [{name: a, plugins: []}, {name: b, plugins: []}]\n"
    assert error_of(HEADER + "plugins: [{type: queue-scorer}]\n" + profiles) == (
        "schedulingProfiles: 2 profiles need a profile handler plugin that runs several; "
        "single-profile-handler (the default) runs exactly one"
    )
    with_handler = HEADER + "plugins: [{name: handler, type: single-profile-handler}]\n" + profiles
    assert (
        error_of(with_handler) == "plugin 'handler': needs exactly one scheduling profile, the config has 2"
    )


def test_a_profile_handler_inside_a_profile_is_rejected():
    text = HEADER + "plugins: [{name: h, type: single-profile-handler}]\n"
    text += "schedulingProfiles: [{name: default, plugins: [{pluginRef: h}]}]\n"
    assert "pluginRef 'h': a profile handler is configured at the top level" in error_of(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "apiVersion: v1\nkind: EndpointPickerConfig\nplugins: [{type: queue-scorer}]\n"
            "schedulingProfiles: [{name: d}]",
            "field 'apiVersion': must be one of inference.networking.x-k8s.io/v1alpha1, "
            "config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1, got 'v1'",
        ),
        (
            HEADER.replace("EndpointPickerConfig", "InferencePool") + "plugins: [{type: queue-scorer}]\n"
            "schedulingProfiles: [{name: d}]",
            "field 'kind': input should be 'EndpointPickerConfig'",
        ),
        (HEADER + "plugins: [{type: queue-scorer}]\n", "field 'schedulingProfiles': required"),
        (
            HEADER + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: d}]\nflowControls: {}\n",
            "field 'flowControls': unknown field (accepted: apiVersion, kind, plugins, schedulingProfiles, "
            "saturationDetector, featureGates, flowControl)",
        ),
        ("- just\n- a list\n", "expected a mapping with apiVersion, kind, plugins and schedulingProfiles"),
    ],
)
def test_malformed_files_say_which_field_is_wrong(text, message):
    assert error_of(text) == message


def test_invalid_yaml_is_reported_as_such():
    assert error_of("plugins: [unclosed").startswith("not valid YAML: ")


def test_the_saturation_detector_section_takes_go_durations():
    text = HEADER + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: d}]\n"
    text += (
        "saturationDetector: {queueDepthThreshold: 8, kvCacheUtilThreshold: 0.9, "
        "metricsStalenessThreshold: 1m30s}\n"
    )
    detector = parse_config(text).saturation_detector
    assert (detector.queue_depth_threshold, detector.kv_cache_util_threshold) == (8, 0.9)
    assert detector.metrics_staleness_threshold == 90.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "metricsStalenessThreshold",
            "soon",
            "must be a positive duration such as '200ms' or '1s', got 'soon'",
        ),
        (
            "metricsStalenessThreshold",
            "200",
            "must be a positive duration such as '200ms' or '1s', got '200'",
        ),
        ("kvCacheUtilThreshold", 80, "must be a number between 0 and 1, got 80"),
        ("queueDepthThreshold", -1, "must be a non-negative integer, got -1"),
    ],
)
def test_bad_saturation_thresholds_name_the_field(field, value, message):
    text = HEADER + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: d}]\n"
    text += f"saturationDetector: {{{field}: {value!r}}}\n"
    assert error_of(text) == f"field 'saturationDetector.{field}': {message}"


def test_load_config_reads_a_file_and_prefixes_errors_with_its_path(tmp_path):
    good = tmp_path / "epp.yaml"
    good.write_text(HEADER + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: d}]\n")
    assert isinstance(load_config(good), EndpointPickerConfig)

    bad = tmp_path / "bad.yaml"
    bad.write_text(HEADER + "plugins: [{name: q, type: queue-scorer, parameters: {x: 1}}]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    assert str(caught.value).startswith(f"{bad}: ")


def test_load_config_of_a_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file '.*missing\.yaml': No such file"):
        load_config(tmp_path / "missing.yaml")


def test_a_plugin_referenced_twice_in_a_profile_is_rejected():
    text = HEADER + "plugins: [{name: prefix, type: prefix-cache-scorer}]\n"
    text += "schedulingProfiles: [{name: default, plugins: [{pluginRef: prefix}, {pluginRef: prefix}]}]\n"
    assert error_of(text) == "scheduling profile 'default': pluginRef 'prefix': referenced more than once"


def test_two_profiles_with_one_name_are_rejected():
    text = HEADER + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a}, {name: a}]\n"
    assert error_of(text) == "scheduling profile 'a': name used by more than one profile"


def test_parameters_must_be_a_mapping():
    text = HEADER + "plugins: [{name: prefix, type: prefix-cache-scorer, parameters: [64]}]\n" + PROFILE
    assert error_of(text) == "field 'plugins[0].parameters': input should be a valid dictionary"
