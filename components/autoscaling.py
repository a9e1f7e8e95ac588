"""Autoscaling on the gateway's own signals with KEDA, scale to zero, and InferenceObjectives.

For a stack with any ``autoscaling`` model, :class:`Keda` installs KEDA from its Helm chart (pinned,
in its own namespace) and gives its operator a Google service account through GKE Workload
Identity, allowed only to read metrics (``roles/monitoring.viewer``): its Prometheus scaler queries
Google Managed Prometheus' PromQL endpoint. Per autoscaled model, :class:`ModelAutoscaler` renders a
``ScaledObject`` on the model's Deployment whose triggers read what the EPP exports (see
:func:`trigger_queries`); with ``minReplicas: 0`` the flow-control queue's activation threshold wakes
a model at zero when its first request waits in the EPP. :class:`Objectives` renders each model's
InferenceObjectives (a priority per objective name), referencing the model's InferencePool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from components.config import KEDA_NAMESPACE, Autoscaling, ModelSpec, PlatformConfig
from components.inference_extension import INFERENCE_GROUP, InferencePool, vendored_crd
from components.model_server import ModelServer
from components.podspec import Fields, labels, object_meta

KEDA_CHART = "keda"
KEDA_CHART_VERSION = "2.20.2"
"""The chart and KEDA itself (the chart's appVersion); its CRDs are ``../shared/crds/keda-v2.20.2``."""
KEDA_CHART_REPOSITORY = "https://kedacore.github.io/charts"
KEDA_OPERATOR_SERVICE_ACCOUNT = "keda-operator"
"""The chart's operator ServiceAccount: the one that queries metrics, so the one bound to Google."""
KEDA_API_VERSION = "keda.sh/v1alpha1"
METRICS_READER_ROLE = "roles/monitoring.viewer"
"""Read-only access to Cloud Monitoring, which serves Managed Prometheus' PromQL API. Nothing else."""
WORKLOAD_IDENTITY_USER = "roles/iam.workloadIdentityUser"
GMP_QUERY_URL = "https://monitoring.googleapis.com/v1/projects/{project}/location/global/prometheus"
TRIGGER_AUTHENTICATION = "keda-gmp-workload-identity"

OBJECTIVE_CRD_MANIFEST = Path(__file__).parent / "manifests" / "inferenceobjective-crd-v1.5.0.yaml"
OBJECTIVE_API_VERSION = "inference.networking.x-k8s.io/v1alpha2"

QUEUE_METRIC = "llm_d_epp_flow_control_queue_size"
"""The EPP's flow-control queue, llm-d-router's name (labels inference_pool, model_name, ...)."""
WAITING_METRIC = "epp_endpoint_waiting_requests"
KV_CACHE_METRIC = "epp_endpoint_kv_cache_usage_ratio"
IN_FLIGHT_METRIC = "epp_endpoint_in_flight_requests"


def _label_value(value: str) -> str:
    """A PromQL string literal's content: backslashes and double quotes escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _selector(**matchers: str) -> str:
    """``{a="x",b=~"y"}`` from ``a="x"`` / ``b="~y"`` keyword pairs (a leading ``~``: a regex)."""
    parts = []
    for label, value in matchers.items():
        operator, text = ("=~", value[1:]) if value.startswith("~") else ("=", value)
        parts.append(f'{label}{operator}"{_label_value(text)}"')
    return "{" + ",".join(parts) + "}"


def trigger_queries(cfg: PlatformConfig, model: ModelSpec, pool: str) -> dict[str, str]:
    """The PromQL of each trigger of ``model`` served from InferencePool ``pool``.

    Series come from the pool's EPP pods (``<pool>-epp-<hash>-<id>``), scraped into Managed
    Prometheus, which labels them with ``cluster`` and ``namespace``. Per-endpoint gauges are
    reported by every EPP replica for every pod: ``max by (name)`` counts each pod once, and the
    pod-name pattern keeps the model's own pods (``vllm-<model>-<hash>-<id>``) in a unified pool.
    """
    scope = {"cluster": cfg.cluster_name, "namespace": cfg.namespace}
    queue = _selector(**scope, inference_pool=pool, model_name=model.served_name)
    pod_name = "[a-z0-9]+-[a-z0-9]+"  # a Deployment's pods: <deployment>-<template hash>-<id>
    endpoints = _selector(**scope, pod=f"~{pool}-epp-{pod_name}", name=f"~vllm-{model.name}-{pod_name}")
    return {
        # Requests held in the EPP (every pod saturated, or none up yet): the wake-up signal.
        "flow-control-queue": f"sum({QUEUE_METRIC}{queue})",
        # Requests waiting inside the model servers (vLLM's num_requests_waiting), all pods.
        "pod-queue": f"sum(max by (name) ({WAITING_METRIC}{endpoints}))",
        # Average KV-cache usage across the model's pods.
        "kv-cache": f"avg(max by (name) ({KV_CACHE_METRIC}{endpoints}))",
        # 1 while any request is being answered: keeps a busy model from counting as idle.
        "in-flight": f"clamp_max(sum({IN_FLIGHT_METRIC}{endpoints}), 1)",
    }


def _number(value: float) -> str:
    """KEDA reads thresholds as strings: ``2`` rather than ``2.0``."""
    return f"{value:g}"


def triggers(cfg: PlatformConfig, model: ModelSpec, pool: str) -> list[Fields]:
    """The ScaledObject's Prometheus triggers: targets per replica, activation, authentication."""
    scaling = model.autoscaling
    assert scaling is not None
    queries = trigger_queries(cfg, model, pool)
    # (metric type, threshold, activation threshold) per trigger. AverageValue: KEDA divides the
    # query's value by the threshold to get replicas; Value: the HPA compares the average itself.
    targets: dict[str, tuple[str, float, float]] = {
        "flow-control-queue": ("AverageValue", scaling.target_queue_per_replica, scaling.activation_queue),
        "pod-queue": ("AverageValue", scaling.target_waiting_per_replica, 0),
        "kv-cache": ("Value", scaling.target_kv_cache_usage, scaling.target_kv_cache_usage),
        "in-flight": ("AverageValue", 1, 0),
    }
    server = GMP_QUERY_URL.format(project=cfg.project)
    return [
        {
            "type": "prometheus",
            "name": name,
            "metricType": metric_type,
            "authenticationRef": {"name": TRIGGER_AUTHENTICATION},
            "metadata": {
                "serverAddress": server,
                "query": queries[name],
                "threshold": _number(threshold),
                "activationThreshold": _number(activation),
                # No series (no pod yet, nothing queued) reads as 0, not as a failing scaler.
                "ignoreNullValues": "true",
            },
        }
        for name, (metric_type, threshold, activation) in targets.items()
    ]


def scaled_object_spec(cfg: PlatformConfig, model: ModelSpec, pool: str, deployment: str) -> Fields:
    scaling: Autoscaling | None = model.autoscaling
    assert scaling is not None
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "cooldownPeriod": scaling.idle_seconds,
        "pollingInterval": scaling.polling_seconds,
        "triggers": triggers(cfg, model, pool),
    }


def service_account_id(cluster_name: str, suffix: str) -> str:
    """A service account id (6-30 characters) ending in ``-<suffix>`` whatever the cluster's name
    length, so it never collides with the nodes' account (``<cluster>-nodes`` cut to 30)."""
    return f"{cluster_name[: 29 - len(suffix)].rstrip('-')}-{suffix}"


@dataclass(frozen=True)
class KedaArgs:
    config: PlatformConfig
    cluster: pulumi.Resource
    """The GKE cluster: its Workload Identity pool must exist before it can be bound."""
    provider: k8s.Provider


class Keda(pulumi.ComponentResource):
    """KEDA from its pinned Helm chart, its operator reading Managed Prometheus as a metrics viewer."""

    service_account: gcp.serviceaccount.Account
    metrics_reader: gcp.projects.IAMMember
    workload_identity: gcp.serviceaccount.IAMMember
    namespace: k8s.core.v1.Namespace
    release: k8s.helm.v3.Release

    def __init__(self, name: str, args: KedaArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:Keda", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        self.service_account = gcp.serviceaccount.Account(
            name,
            account_id=service_account_id(cfg.cluster_name, "keda"),
            display_name=f"KEDA of {cfg.cluster_name}: reads Managed Prometheus",
            project=cfg.project,
            opts=child,
        )
        self.metrics_reader = gcp.projects.IAMMember(
            f"{name}-monitoring-viewer",
            project=cfg.project,
            role=METRICS_READER_ROLE,
            member=self.service_account.email.apply(lambda email: f"serviceAccount:{email}"),
            opts=child,
        )
        kubernetes_identity = (
            f"serviceAccount:{cfg.project}.svc.id.goog[{KEDA_NAMESPACE}/{KEDA_OPERATOR_SERVICE_ACCOUNT}]"
        )
        self.workload_identity = gcp.serviceaccount.IAMMember(
            f"{name}-workload-identity",
            service_account_id=self.service_account.name,
            role=WORKLOAD_IDENTITY_USER,
            member=kubernetes_identity,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args.cluster]),
        )
        k8s_child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        self.namespace = k8s.core.v1.Namespace(
            KEDA_NAMESPACE,
            metadata={
                "name": KEDA_NAMESPACE,
                "labels": labels("namespace", KEDA_NAMESPACE)
                | {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
            opts=k8s_child,
        )
        images = {"tag": KEDA_CHART_VERSION}
        values: Fields = {
            "image": {
                "keda": images,
                "metricsApiServer": images,
                "webhooks": images,
                "pullPolicy": "IfNotPresent",
            },
            "serviceAccount": {"operator": {"name": KEDA_OPERATOR_SERVICE_ACCOUNT}},
            # The chart annotates the operator's ServiceAccount with iam.gke.io/gcp-service-account.
            "podIdentity": {"gcp": {"enabled": True, "gcpIAMServiceAccount": self.service_account.email}},
            # Least privilege in the cluster too: only the gateway's namespace, only Deployments.
            "watchNamespace": cfg.namespace,
            "rbac": {"scaledRefKinds": [{"apiGroup": "apps", "kind": "Deployment"}]},
        }
        self.release = k8s.helm.v3.Release(
            name,
            name=KEDA_CHART,
            chart=KEDA_CHART,
            version=KEDA_CHART_VERSION,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=KEDA_CHART_REPOSITORY),
            namespace=self.namespace.metadata.name,
            values=values,
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=args.provider,
                # The operator's first query must find its Google identity allowed to read metrics.
                depends_on=[self.metrics_reader, self.workload_identity],
            ),
        )
        self.register_outputs({"release": KEDA_CHART, "serviceAccount": self.service_account.email})


@dataclass(frozen=True)
class ModelAutoscalerArgs:
    config: PlatformConfig
    model: ModelSpec
    pool: str
    """The InferencePool whose EPP serves the model (its flow-control queue and gauges)."""
    deployment: k8s.apps.v1.Deployment
    namespace_ref: pulumi.Input[str]
    keda: Keda
    authentication: k8s.apiextensions.CustomResource
    provider: k8s.Provider


class ModelAutoscaler(pulumi.ComponentResource):
    """A ScaledObject on one model's Deployment."""

    scaled_object: k8s.apiextensions.CustomResource

    def __init__(
        self, name: str, args: ModelAutoscalerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gke-llm-gateway:index:ModelAutoscaler", name, None, opts)
        object_name = f"vllm-{args.model.name}"
        self.scaled_object = k8s.apiextensions.CustomResource(
            f"{object_name}-scaler",
            api_version=KEDA_API_VERSION,
            kind="ScaledObject",
            metadata=object_meta(object_name, args.namespace_ref, "scaledobject", object_name),
            spec=scaled_object_spec(args.config, args.model, args.pool, object_name),
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=args.provider,
                depends_on=[args.keda.release, args.authentication, args.deployment],
            ),
        )
        self.register_outputs({"scaledObject": object_name})


def trigger_authentication(
    name: str, namespace_ref: pulumi.Input[str], keda: Keda, provider: k8s.Provider, parent: pulumi.Resource
) -> k8s.apiextensions.CustomResource:
    """KEDA authenticates to Managed Prometheus as its operator's Google identity (no key anywhere)."""
    return k8s.apiextensions.CustomResource(
        name,
        api_version=KEDA_API_VERSION,
        kind="TriggerAuthentication",
        metadata=object_meta(TRIGGER_AUTHENTICATION, namespace_ref, "triggerauthentication", "keda"),
        spec={"podIdentity": {"provider": "gcp"}},
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, depends_on=[keda.release]),
    )


@dataclass(frozen=True)
class ObjectivesArgs:
    models: list[tuple[ModelSpec, pulumi.Resource, str]]
    """Each model with objectives, its InferencePool resource and that pool's name."""
    namespace_ref: pulumi.Input[str]
    provider: k8s.Provider


class Objectives(pulumi.ComponentResource):
    """The InferenceObjective CRD (alpha; GKE does not ship it) and each model's objectives."""

    crd: k8s.apiextensions.v1.CustomResourceDefinition
    objectives: list[k8s.apiextensions.CustomResource]

    def __init__(self, name: str, args: ObjectivesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:Objectives", name, None, opts)
        self.crd = vendored_crd(OBJECTIVE_CRD_MANIFEST, args.provider, self)
        self.objectives = []
        for model, pool, pool_name in args.models:
            for objective in model.objectives:
                spec: Fields = {
                    "poolRef": {"group": INFERENCE_GROUP, "kind": "InferencePool", "name": pool_name},
                    "priority": objective.priority,
                }
                self.objectives.append(
                    k8s.apiextensions.CustomResource(
                        f"objective-{objective.name}",
                        api_version=OBJECTIVE_API_VERSION,
                        kind="InferenceObjective",
                        metadata=object_meta(
                            objective.name, args.namespace_ref, "inferenceobjective", model.name
                        ),
                        spec=spec,
                        opts=pulumi.ResourceOptions(
                            parent=self, provider=args.provider, depends_on=[self.crd, pool]
                        ),
                    )
                )
        self.register_outputs({"objectives": [o.name for m, _, _ in args.models for o in m.objectives]})


def wake_timeout(models: Sequence[ModelSpec]) -> int | None:
    """How long the EPP of a pool holds a request while no endpoint serves it: the longest
    ``wakeTimeout`` of the pool's models that may be at zero pods (None: none may)."""
    waits = [m.autoscaling.wake_timeout for m in models if m.autoscaling and m.autoscaling.min_replicas == 0]
    return max(waits) if waits else None


def elastic(
    parent: pulumi.Resource,
    cfg: PlatformConfig,
    cluster: pulumi.Resource,
    servers: Mapping[str, ModelServer],
    pool_of: Mapping[str, tuple[InferencePool, str]],
    namespace_ref: pulumi.Input[str],
    provider: k8s.Provider,
) -> None:
    """KEDA and a ScaledObject per autoscaled model, and the InferenceObjectives, when configured."""
    child = pulumi.ResourceOptions(parent=parent)
    scaled = [model for model in cfg.models if model.autoscaling is not None]
    if scaled:
        keda = Keda("keda", KedaArgs(config=cfg, cluster=cluster, provider=provider), opts=child)
        authentication = trigger_authentication(
            TRIGGER_AUTHENTICATION, namespace_ref, keda, provider, parent=keda
        )
        for model in scaled:
            ModelAutoscaler(
                model.name,
                ModelAutoscalerArgs(
                    config=cfg,
                    model=model,
                    pool=pool_of[model.name][1],
                    deployment=servers[model.name].deployment,
                    namespace_ref=namespace_ref,
                    keda=keda,
                    authentication=authentication,
                    provider=provider,
                ),
                opts=child,
            )
    with_objectives = [(m, *pool_of[m.name]) for m in cfg.models if m.objectives]
    if with_objectives:
        Objectives(
            "objectives",
            ObjectivesArgs(
                models=[(m, pool.pool, pool_name) for m, pool, pool_name in with_objectives],
                namespace_ref=namespace_ref,
                provider=provider,
            ),
            opts=child,
        )
