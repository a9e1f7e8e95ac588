import pytest
from epp.scheduling import ConfigError

from tests.epp.scheduling.builders import endpoint, plugin, request

NVLINK = {"llm-d.ai/kv-backend": "nvlink"}


def names(endpoints):
    return [e.name for e in endpoints]


def test_match_labels_keeps_only_endpoints_carrying_every_label():
    selector = plugin(
        "label-selector-filter", {"matchLabels": {"llm-d.ai/kv-backend": "nvlink", "zone": "a"}}
    )
    pods = [
        endpoint("both", labels={**NVLINK, "zone": "a"}),
        endpoint("nvlink-only", labels=NVLINK),
        endpoint("none"),
    ]
    assert names(selector.filter({}, request(), pods)) == ["both"]


@pytest.mark.parametrize(
    ("expression", "kept"),
    [
        ({"key": "tier", "operator": "In", "values": ["gold", "silver"]}, ["gold", "silver"]),
        ({"key": "tier", "operator": "NotIn", "values": ["gold"]}, ["silver", "bronze", "unlabelled"]),
        ({"key": "tier", "operator": "Exists"}, ["gold", "silver", "bronze"]),
        ({"key": "tier", "operator": "DoesNotExist"}, ["unlabelled"]),
    ],
)
def test_match_expressions_follow_kubernetes_semantics(expression, kept):
    selector = plugin("label-selector-filter", {"matchExpressions": [expression]})
    pods = [endpoint(t, labels={"tier": t}) for t in ("gold", "silver", "bronze")] + [endpoint("unlabelled")]
    assert names(selector.filter({}, request(), pods)) == kept


def test_labels_and_expressions_must_all_hold():
    selector = plugin(
        "label-selector-filter",
        {"matchLabels": NVLINK, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}]},
    )
    pods = [
        endpoint("gold-nvlink", labels={**NVLINK, "tier": "gold"}),
        endpoint("gold", labels={"tier": "gold"}),
        endpoint("silver-nvlink", labels={**NVLINK, "tier": "silver"}),
    ]
    assert names(selector.filter({}, request(), pods)) == ["gold-nvlink"]


def test_an_empty_selector_keeps_everyone():
    pods = [endpoint("a"), endpoint("b", labels=NVLINK)]
    assert names(plugin("label-selector-filter").filter({}, request(), pods)) == ["a", "b"]


def test_by_label_selector_is_the_same_filter_under_its_llm_d_name():
    pods = [endpoint("nvlink", labels=NVLINK), endpoint("plain")]
    assert names(plugin("by-label-selector", {"matchLabels": NVLINK}).filter({}, request(), pods)) == [
        "nvlink"
    ]


def test_in_without_values_is_rejected_naming_the_field():
    with pytest.raises(ConfigError) as caught:
        plugin("label-selector-filter", {"matchExpressions": [{"key": "tier", "operator": "In"}]})
    assert str(caught.value) == (
        "plugin 'label-selector-filter': parameter 'matchExpressions[0]': "
        "operator In needs at least one value (key 'tier')"
    )


def test_an_unknown_operator_is_rejected_naming_the_field():
    with pytest.raises(ConfigError, match=r"parameter 'matchExpressions\[0\]\.operator'"):
        plugin("label-selector-filter", {"matchExpressions": [{"key": "tier", "operator": "Equals"}]})
