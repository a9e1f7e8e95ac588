"""Autoscaling with KEDA, scale to zero and InferenceObjectives in the stacks (issue 18, items 3-4).

A model's ``autoscaling`` block becomes a ScaledObject on its Deployment whose Prometheus triggers
read the EPP's own metrics from Google Managed Prometheus, as KEDA's operator, a Google identity that
may only read metrics; KEDA comes from its pinned Helm chart. The names a trigger's PromQL reads are
checked against the metrics the EPP really registers, not against a list copied here.
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from typing import Any

import pytest
import yaml
from epp.datastore import Datastore
from epp.flowcontrol.metrics import FlowControlMetrics
from epp.scheduling.config import PROFILES_DIR, PROFILES_PACKAGE, parse_config
from epp.settings import EppSettings
from epp.telemetry import Telemetry
from prometheus_client import CollectorRegistry

from components.autoscaling import (
    GMP_QUERY_URL,
    KEDA_CHART_REPOSITORY,
    KEDA_CHART_VERSION,
    KEDA_NAMESPACE,
    KEDA_OPERATOR_SERVICE_ACCOUNT,
    TRIGGER_AUTHENTICATION,
    service_account_id,
)
from components.config import ConfigError
from render import RegisteredResource, StackRun, load_stack_config, render_stack
from tests.infra.conftest import DEPLOYMENT, named, objects, of_type
from tests.infra.shared import shared_dir
from tests.infra.test_schemas import _schema_errors

DEFAULT_PROFILE_TEXT = (
    resources.files(PROFILES_PACKAGE).joinpath(PROFILES_DIR, "default.yaml").read_text(encoding="utf-8")
)

RELEASE = "kubernetes:helm.sh/v3:Release"
SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"
TRIGGER_AUTH = "kubernetes:keda.sh/v1alpha1:TriggerAuthentication"
OBJECTIVE = "kubernetes:inference.networking.x-k8s.io/v1alpha2:InferenceObjective"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
ACCOUNT_MEMBER = "gcp:serviceaccount/iAMMember:IAMMember"
ACCOUNT = "gcp:serviceaccount/account:Account"
CRD = "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"

PHI3 = "microsoft/Phi-3-mini-4k-instruct"
TO_ZERO = {"minReplicas": 0, "maxReplicas": 2, "idleSeconds": 600, "wakeTimeout": 480}
OBJECTIVES = [{"name": "chat", "priority": 10}, {"name": "batch", "priority": -1}]


def _models(stack: str, index: int, **changes: Any) -> list[dict[str, Any]]:
    """The stack's models with ``changes`` on one; ``replicas`` dropped when it gets ``autoscaling``."""
    _, config = load_stack_config(stack)
    models: list[dict[str, Any]] = copy.deepcopy(config["gke-llm-gateway:platform"]["models"])
    if "autoscaling" in changes:
        models[index].pop("replicas", None)
    models[index].update(changes)
    return models


@pytest.fixture(scope="module")
def elastic() -> StackRun:
    """The gpu stack with phi3 scaling to zero after 10 idle minutes, and two objectives on it."""
    return render_stack("gpu", {"models": _models("gpu", 1, autoscaling=TO_ZERO, objectives=OBJECTIVES)})


@pytest.fixture(scope="module")
def elastic_unified() -> StackRun:
    """The tpu stack with every model in one pool, phi3 scaling to zero on targets of its own."""
    targets = {"targetQueuePerReplica": 3, "activationQueue": 1, "targetKvCacheUsage": 0.7}
    targets |= {"pollingSeconds": 30, "wakeTimeout": 300}
    models = _models("tpu", 1, autoscaling=TO_ZERO | targets)
    return render_stack("tpu", {"models": models, "routingMode": "unified-pool"})


def _scaled_object(run: StackRun) -> dict[str, Any]:
    [scaled] = [o for o in objects(run) if o["kind"] == "ScaledObject"]
    return scaled


def _triggers(run: StackRun) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in _scaled_object(run)["spec"]["triggers"]}


# PromQL: what is a function, an aggregation keyword or a label list, and what is a metric.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_FUNCTIONS = {"sum", "avg", "max", "min", "count", "clamp_max", "clamp_min", "rate", "increase", "vector"}


def metric_names(query: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not a function call, an
    aggregation's label list, a keyword, or inside a string or a label matcher."""
    text = _GROUPING.sub(" ", _MATCHERS.sub(" ", _STRING.sub(" ", query)))
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            assert match.group() in _FUNCTIONS, f"unexpected PromQL function {match.group()} in {query}"
            continue
        names.add(match.group())
    return names


def exported_metric_names() -> set[str]:
    """Every series name the EPP's registry exposes: flow control, per-endpoint gauges, counters."""
    registry = CollectorRegistry()
    FlowControlMetrics(registry, pool="any-pool")
    telemetry = Telemetry("epp", Datastore(pool_models=("any-model",)))
    names: set[str] = set()
    for source in (registry, telemetry.registry):
        for family in source.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
    return names


def test_the_promql_parser_finds_the_metrics_and_only_them() -> None:
    query = 'sum(max by (name) (foo_total{name=~"vllm-a-[a-z]+",x="sum(bar)"})) + clamp_max(baz, 1)'

    assert metric_names(query) == {"foo_total", "baz"}
    assert "foo_total" not in exported_metric_names()


def test_every_metric_a_trigger_reads_is_one_the_epp_exports(
    elastic: StackRun, elastic_unified: StackRun
) -> None:
    exported = exported_metric_names()

    for run in (elastic, elastic_unified):
        for name, trigger in _triggers(run).items():
            read = metric_names(trigger["metadata"]["query"])
            assert read, f"trigger {name} reads no metric"
            assert read <= exported, f"trigger {name} reads {read - exported}, which the EPP does not export"


def test_an_autoscaled_model_gets_a_scaled_object_on_its_deployment(elastic: StackRun) -> None:
    scaled = _scaled_object(elastic)

    assert scaled["metadata"]["namespace"] == "llm-gateway"
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm-phi3"}
    assert scaled["spec"]["scaleTargetRef"] == target
    assert scaled["spec"]["minReplicaCount"] == 0
    assert scaled["spec"]["maxReplicaCount"] == 2
    assert scaled["spec"]["cooldownPeriod"] == 600
    assert set(_triggers(elastic)) == {"flow-control-queue", "pod-queue", "kv-cache", "in-flight"}


def test_keda_alone_sets_the_replicas_of_an_autoscaled_deployment(elastic: StackRun) -> None:
    phi3 = named(elastic, DEPLOYMENT, "vllm-phi3")
    gemma = named(elastic, DEPLOYMENT, "vllm-gemma")

    assert "replicas" not in phi3.props["spec"]
    assert "spec.replicas" in phi3.ignore_changes
    assert gemma.props["spec"]["replicas"] == 1
    assert gemma.ignore_changes == ()


def test_one_queued_request_wakes_the_model_from_zero(elastic: StackRun) -> None:
    queue = _triggers(elastic)["flow-control-queue"]

    assert queue["metadata"]["activationThreshold"] == "0"
    assert queue["metadata"]["threshold"] == "2"
    assert 'inference_pool="phi3-pool"' in queue["metadata"]["query"]
    assert f'model_name="{PHI3}"' in queue["metadata"]["query"]


def test_in_a_unified_pool_each_model_scales_on_its_own_requests_and_pods(elastic_unified: StackRun) -> None:
    triggers = _triggers(elastic_unified)

    assert 'inference_pool="all-models-pool"' in triggers["flow-control-queue"]["metadata"]["query"]
    assert f'model_name="{PHI3}"' in triggers["flow-control-queue"]["metadata"]["query"]
    for name in ("pod-queue", "kv-cache", "in-flight"):
        query = triggers[name]["metadata"]["query"]
        assert 'name=~"vllm-phi3-[a-z0-9]+-[a-z0-9]+"' in query
        assert 'pod=~"all-models-pool-epp-[a-z0-9]+-[a-z0-9]+"' in query


def test_the_configured_targets_reach_the_triggers_and_the_picker(elastic_unified: StackRun) -> None:
    triggers = _triggers(elastic_unified)
    queue, kv_cache = triggers["flow-control-queue"]["metadata"], triggers["kv-cache"]["metadata"]

    assert (queue["threshold"], queue["activationThreshold"]) == ("3", "1")
    assert (kv_cache["threshold"], triggers["kv-cache"]["metricType"]) == ("0.7", "Value")
    assert _scaled_object(elastic_unified)["spec"]["pollingInterval"] == 30
    picker = _picker_config(elastic_unified, "all-models-pool")
    assert picker["flowControl"] == {"noEndpointRequestTTL": "300s"}


def test_triggers_read_managed_prometheus_as_keda_s_workload_identity(elastic: StackRun) -> None:
    [auth] = [o for o in objects(elastic) if o["kind"] == "TriggerAuthentication"]
    server = GMP_QUERY_URL.format(project="my-gcp-project")

    assert auth["metadata"] == auth["metadata"] | {"name": TRIGGER_AUTHENTICATION, "namespace": "llm-gateway"}
    assert auth["spec"] == {"podIdentity": {"provider": "gcp"}}
    for trigger in _triggers(elastic).values():
        assert trigger["type"] == "prometheus"
        assert trigger["metadata"]["serverAddress"] == server
        assert trigger["authenticationRef"] == {"name": TRIGGER_AUTHENTICATION}
        assert 'cluster="llm-gateway-gpu",namespace="llm-gateway"' in trigger["metadata"]["query"]


def test_the_keda_objects_match_the_crds_of_the_pinned_release(elastic: StackRun) -> None:
    kinds = {"ScaledObject", "TriggerAuthentication", "InferenceObjective"}
    custom = [o for o in objects(elastic) if o["kind"] in kinds]

    assert sorted(o["kind"] for o in custom) == [
        "InferenceObjective",
        "InferenceObjective",
        "ScaledObject",
        "TriggerAuthentication",
    ]
    for manifest in custom:
        assert _schema_errors(manifest) == [], f"{manifest['kind']} {manifest['metadata']['name']}"


def test_keda_is_installed_from_its_pinned_chart_in_its_own_namespace(elastic: StackRun) -> None:
    [release] = of_type(elastic, RELEASE)
    [keda_account] = [a for a in of_type(elastic, ACCOUNT) if a.props["accountId"].endswith("-keda")]
    [namespace] = [
        o for o in objects(elastic) if o["kind"] == "Namespace" and o["metadata"]["name"] == KEDA_NAMESPACE
    ]

    assert (shared_dir() / "crds" / f"keda-v{KEDA_CHART_VERSION}").is_dir()
    assert release.props["chart"] == "keda"
    assert release.props["version"] == KEDA_CHART_VERSION
    assert release.props["repositoryOpts"] == {"repo": KEDA_CHART_REPOSITORY}
    assert release.props["namespace"] == KEDA_NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    values = release.props["values"]
    assert values["serviceAccount"]["operator"]["name"] == KEDA_OPERATOR_SERVICE_ACCOUNT
    assert values["podIdentity"]["gcp"] == {
        "enabled": True,
        "gcpIAMServiceAccount": "llm-gateway-gpu-keda@my-gcp-project.iam.gserviceaccount.com",
    }
    assert values["watchNamespace"] == "llm-gateway"
    assert values["rbac"]["scaledRefKinds"] == [{"apiGroup": "apps", "kind": "Deployment"}]
    tags = {image["tag"] for key, image in values["image"].items() if key != "pullPolicy"}
    assert tags == {KEDA_CHART_VERSION}
    assert keda_account.props["project"] == "my-gcp-project"


@pytest.mark.parametrize("cluster", ["llm-gateway-gpu", "a", "a-cluster-name-of-forty-characters-long1"])
def test_keda_s_account_id_is_valid_and_never_the_nodes_one(cluster: str) -> None:
    account = service_account_id(cluster, "keda")

    assert re.fullmatch(r"[a-z][-a-z0-9]{4,28}[a-z0-9]", account)
    assert account.endswith("-keda")
    assert account != f"{cluster}-nodes"[:30]


def _member_of(resource: RegisteredResource) -> str:
    member = resource.props["member"]
    assert isinstance(member, str)
    return member


def test_keda_may_only_read_metrics_and_only_as_its_operator(elastic: StackRun) -> None:
    keda = "serviceAccount:llm-gateway-gpu-keda@my-gcp-project.iam.gserviceaccount.com"
    grants = [m for m in of_type(elastic, PROJECT_MEMBER) if _member_of(m) == keda]
    [impersonation] = of_type(elastic, ACCOUNT_MEMBER)
    [release] = of_type(elastic, RELEASE)

    assert [g.props["role"] for g in grants] == ["roles/monitoring.viewer"]
    assert impersonation.props["role"] == "roles/iam.workloadIdentityUser"
    assert _member_of(impersonation) == (
        f"serviceAccount:my-gcp-project.svc.id.goog[{KEDA_NAMESPACE}/{KEDA_OPERATOR_SERVICE_ACCOUNT}]"
    )
    assert {grants[0].urn, impersonation.urn} <= set(release.dependencies)


def _picker_config(run: StackRun, pool: str) -> dict[str, Any]:
    config_map = named(run, CONFIG_MAP, f"{pool}-epp-config")
    document = yaml.safe_load(config_map.props["data"]["epp.yaml"])
    assert isinstance(document, dict)
    return document


def test_the_epp_of_a_pool_at_zero_holds_requests_for_the_wake_timeout(elastic: StackRun) -> None:
    waking = _picker_config(elastic, "phi3-pool")
    fixed = _picker_config(elastic, "gemma-pool")

    assert "flowControl" in waking["featureGates"]
    assert waking["flowControl"] == {"noEndpointRequestTTL": "480s"}
    assert "flowControl" not in fixed
    assert "flowControl" not in fixed.get("featureGates", [])
    # The EPP's own parser reads it, queue and all: a request waits up to the wake timeout.
    flow_control = parse_config(yaml.safe_dump(waking)).flow_control_config()
    assert flow_control is not None
    assert flow_control.no_endpoint_request_ttl == 480


def test_the_epp_knows_the_served_names_of_a_pool_with_no_pod(elastic: StackRun) -> None:
    epp = named(elastic, DEPLOYMENT, "phi3-pool-epp")
    [container] = epp.props["spec"]["template"]["spec"]["containers"]
    argv = container["args"]

    assert argv[argv.index("--pool-models") + 1] == PHI3


def test_the_epp_of_a_pool_with_objectives_knows_their_priorities(elastic: StackRun) -> None:
    epp = named(elastic, DEPLOYMENT, "phi3-pool-epp")
    [container] = epp.props["spec"]["template"]["spec"]["containers"]
    settings = EppSettings.parse_args(container["args"])
    objectives = {o["metadata"]["name"]: o["spec"]["priority"] for o in objects(elastic)
                  if o["kind"] == "InferenceObjective"}
    assert objectives
    assert settings.objectives == objectives


def test_objectives_give_priorities_on_their_models_pool(elastic: StackRun) -> None:
    found = {o["metadata"]["name"]: o["spec"] for o in objects(elastic) if o["kind"] == "InferenceObjective"}
    [crd] = [c for c in of_type(elastic, CRD) if c.props["metadata"]["name"].startswith("inferenceobj")]
    pool_ref = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "phi3-pool"}

    assert found == {
        "chat": {"poolRef": pool_ref, "priority": 10},
        "batch": {"poolRef": pool_ref, "priority": -1},
    }
    assert crd.retain_on_delete
    for objective in of_type(elastic, OBJECTIVE):
        assert crd.urn in objective.dependencies


def test_the_committed_stacks_install_no_autoscaler(stack_run: StackRun) -> None:
    assert of_type(stack_run, RELEASE) == []
    assert of_type(stack_run, SCALED_OBJECT) == []
    assert of_type(stack_run, TRIGGER_AUTH) == []
    assert of_type(stack_run, OBJECTIVE) == []


def _scaling(**fields: Any) -> dict[str, Any]:
    return {"models": _models("gpu", 1, autoscaling=fields)}


def _with_queue(**flow: str) -> dict[str, Any]:
    """The default profile as a full EndpointPickerConfig with the flow-control queue on."""
    document = yaml.safe_load(DEFAULT_PROFILE_TEXT)
    return {**document, "featureGates": ["flowControl"], "flowControl": flow}


BAD_INPUT = {
    "a floor above the ceiling": (
        _scaling(minReplicas=3, maxReplicas=2),
        "platform.models[1].autoscaling.minReplicas",
        "3 is greater than maxReplicas (2)",
    ),
    "a queue target of zero": (
        _scaling(targetQueuePerReplica=0),
        "platform.models[1].autoscaling.targetQueuePerReplica",
        "greater than 0",
    ),
    "a negative KV-cache target": (
        _scaling(targetKvCacheUsage=-0.5),
        "platform.models[1].autoscaling.targetKvCacheUsage",
        "greater than 0",
    ),
    "a wake timeout as long as the route's": (
        _scaling(minReplicas=0, wakeTimeout=600),
        "platform.models[1].autoscaling.wakeTimeout",
        "not shorter than gateway.requestTimeoutSec (600s)",
    ),
    "a queue TTL as long as the gateway's request timeout": (
        {"epp": {"config": _with_queue(defaultRequestTTL="10m")}},
        "platform.epp.config.flowControl.defaultRequestTTL",
        "600s is not shorter than gateway.requestTimeoutSec (600s)",
    ),
    "a queue without a time limit": (
        {"epp": {"config": _with_queue(noEndpointRequestTTL="0s")}},
        "platform.epp.config.flowControl.noEndpointRequestTTL",
        "0s (no limit) is not shorter than gateway.requestTimeoutSec (600s)",
    ),
    "a model at zero whose queue's default TTL outlasts a short request timeout": (
        {**_scaling(minReplicas=0, wakeTimeout=20), "gateway": {"requestTimeoutSec": 30}},
        "platform.epp.config.flowControl.defaultRequestTTL",
        "60s is not shorter than gateway.requestTimeoutSec (30s)",
    ),
    "scale to zero on a node pool that keeps a node": (
        {
            "models": _models("gpu", 1, autoscaling={"minReplicas": 0}),
            "nodePools": [
                load_stack_config("gpu")[1]["gke-llm-gateway:platform"]["nodePools"][0],
                {**load_stack_config("gpu")[1]["gke-llm-gateway:platform"]["nodePools"][1], "minNodes": 1},
            ],
        },
        "platform.models[1].autoscaling.minReplicas",
        "node pool t4 keeps minNodes 1",
    ),
    "more replicas than the node pool holds": (
        _scaling(maxReplicas=4),
        "platform.models[1].autoscaling.maxReplicas",
        "exceeds the 3 pods node pool t4 can hold",
    ),
    "the gateway in KEDA's namespace": (
        {"namespace": "keda", "models": _models("gpu", 1, autoscaling={})},
        "platform.namespace",
        "KEDA's own namespace",
    ),
    "a misspelt autoscaling field": (
        _scaling(idleSecond=60),
        "platform.models[1].autoscaling.idleSecond",
        "unknown field",
    ),
    "replicas beside autoscaling": (
        {"models": [*_models("gpu", 1)[:1], {**_models("gpu", 1)[1], "autoscaling": {}}]},
        "platform.models[1].replicas",
        "KEDA sets the replicas",
    ),
    "a priority that is not an integer": (
        {"models": _models("gpu", 0, objectives=[{"name": "chat", "priority": 1.5}])},
        "platform.models[0].objectives[0].priority",
        "valid integer",
    ),
    "a priority given as text": (
        {"models": _models("gpu", 0, objectives=[{"name": "chat", "priority": "high"}])},
        "platform.models[0].objectives[0].priority",
        "valid integer",
    ),
    "one objective name on two models": (
        {
            "models": [
                {**_models("gpu", 0)[0], "objectives": [{"name": "chat", "priority": 1}]},
                {**_models("gpu", 0)[1], "objectives": [{"name": "chat", "priority": 2}]},
            ]
        },
        "platform.models[1].objectives[0].name",
        "already an objective of models[0]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_autoscaling_or_objectives_name_the_field_before_any_resource(case: str) -> None:
    overrides, field, problem = BAD_INPUT[case]

    run = render_stack("gpu", overrides, check=False)

    assert isinstance(run.error, ConfigError)
    [message] = run.error.errors
    assert message.startswith(f"{field}: "), message
    assert problem in message
    assert run.resources == []
