"""Typed stack configuration: the `gke-llm-gateway:platform` object of `Pulumi.<stack>.yaml`.

Everything the program builds is decided here, and every rule a reviewer would check by hand is a
validator, so a bad stack file fails before a single resource is registered, with an error that
names the offending field (for example ``platform.models[1].accelerator: ...``).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from epp.contract import DEFAULT_PROFILE, ProfileName
from epp.flowcontrol.config import FlowControlConfig
from epp.routing import RoutingMode
from epp.scheduling.config import load_profile, parse_config
from epp.scheduling.errors import ConfigError as PickerConfigError
from epp.validation import field_path, problems
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

CONFIG_KEY = "platform"
"""Name of the structured config object (``gke-llm-gateway:platform``)."""

HF_TOKEN_KEY = "hfToken"
"""Name of the secret config value holding the Hugging Face token (``pulumi config set --secret``)."""

API_KEYS_KEY = "apiKeys"
"""Name of the secret config value holding the API key list (YAML or JSON, see ``epp.auth.keys``)."""

TLS_CERTIFICATE_KEY = "tlsCertificate"
TLS_PRIVATE_KEY_KEY = "tlsPrivateKey"
"""Secret config values holding a self-managed certificate chain and its key (PEM), for trials."""

HOSTNAME = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
"""A fully qualified DNS name, lower case (what a certificate is issued for)."""


@dataclass(frozen=True)
class Accelerator:
    """What the cluster and the pods need to know about one accelerator type."""

    family: Literal["gpu", "tpu"]
    resource: str
    """Extended resource the container requests (``nvidia.com/gpu`` / ``google.com/tpu``)."""
    node_selector_key: str
    """Node label GKE sets on nodes of this accelerator."""


ACCELERATORS: Mapping[str, Accelerator] = {
    "nvidia-tesla-t4": Accelerator("gpu", "nvidia.com/gpu", "cloud.google.com/gke-accelerator"),
    "nvidia-l4": Accelerator("gpu", "nvidia.com/gpu", "cloud.google.com/gke-accelerator"),
    "nvidia-tesla-a100": Accelerator("gpu", "nvidia.com/gpu", "cloud.google.com/gke-accelerator"),
    "nvidia-h100-80gb": Accelerator("gpu", "nvidia.com/gpu", "cloud.google.com/gke-accelerator"),
    "tpu-v5-lite-podslice": Accelerator("tpu", "google.com/tpu", "cloud.google.com/gke-tpu-accelerator"),
    "tpu-v6e-slice": Accelerator("tpu", "google.com/tpu", "cloud.google.com/gke-tpu-accelerator"),
}
"""Accelerators this program knows how to schedule onto (GKE's accelerator label values)."""

AcceleratorName = Literal[
    "nvidia-tesla-t4",
    "nvidia-l4",
    "nvidia-tesla-a100",
    "nvidia-h100-80gb",
    "tpu-v5-lite-podslice",
    "tpu-v6e-slice",
]

InferencePoolCrdSource = Literal["gke-managed", "install"]
"""Who puts the ``inferencepools.inference.networking.k8s.io`` CRD on the cluster: GKE, or this program."""

GKE_MANAGED_INFERENCE_POOL_CRD_VERSION = "1.34.0-gke.1626000"
"""First GKE version that installs the GA InferencePool CRD itself (Gateway API enabled). A minimum,
checked at preview against what GKE offers (:mod:`components.versions`), never a pinned version."""

KNOWN_GATED_MODELS: tuple[str, ...] = ("google/gemma-", "meta-llama/", "mistralai/Mistral-Large")
"""Hugging Face id prefixes of models whose weights need an accepted licence and a token (``gated``
defaults to true for them)."""

DNS_LABEL = r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$"
"""Short Kubernetes-safe names: they are prefixed/suffixed to build object names (max 63)."""

HEADER_VALUE = re.compile(r"^[\x21-\x7e]{1,256}$")
"""A served model name travels in ``X-Gateway-Base-Model-Name``: visible ASCII, no spaces."""

PINNED_IMAGE = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")
"""``name[:tag]@sha256:<digest>``: what runs is what was reviewed, whatever happens to the tag."""

TAGGED_IMAGE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9._/-]*(:[0-9]+/[a-z0-9._/-]+)?):(?P<tag>[\w][\w.-]{0,127})$"
)
"""``name:tag`` (a registry host may carry a port): a version the program resolves to a digest at preview."""

MOVING_TAGS = frozenset({"latest", "nightly", "main"})
"""Tags that name no release: resolving them would pin whatever happened to be pushed last."""

HUGGING_FACE_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+\Z")
"""``owner/name`` of a model on the Hugging Face Hub."""

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"

KEDA_NAMESPACE = "keda"
"""Where the program installs KEDA for a stack with autoscaling (``components.autoscaling``)."""


class _Model(BaseModel):
    """Strict base: camelCase keys in YAML, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class Resources(_Model):
    """Requests = limits for CPU, memory and scratch disk (a Guaranteed-like, predictable pod)."""

    cpu: Annotated[str, Field(pattern=QUANTITY)] = "500m"
    memory: Annotated[str, Field(pattern=QUANTITY)] = "512Mi"
    ephemeral_storage: Annotated[str, Field(pattern=QUANTITY)] = "1Gi"


class Network(_Model):
    """VPC ranges: nodes, pods, services, and the proxy-only subnet of the regional load balancer."""

    node_cidr: str = "10.10.0.0/20"
    pod_cidr: str = "10.20.0.0/14"
    service_cidr: str = "10.30.0.0/20"
    proxy_only_cidr: str = "10.129.0.0/23"

    @field_validator("node_cidr", "pod_cidr", "service_cidr", "proxy_only_cidr")
    @classmethod
    def _is_cidr(cls, value: str) -> str:
        try:
            ipaddress.IPv4Network(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 CIDR range ({exc})") from None
        return value

    @model_validator(mode="after")
    def _disjoint(self) -> Network:
        ranges = {
            "nodeCidr": self.node_cidr,
            "podCidr": self.pod_cidr,
            "serviceCidr": self.service_cidr,
            "proxyOnlyCidr": self.proxy_only_cidr,
        }
        items = list(ranges.items())
        for i, (name_a, a) in enumerate(items):
            for name_b, b in items[i + 1 :]:
                if ipaddress.IPv4Network(a).overlaps(ipaddress.IPv4Network(b)):
                    raise ValueError(f"{name_a} {a} overlaps {name_b} {b}")
        return self


class NodePool(_Model):
    """One GKE node pool. ``minNodes: 0`` lets the autoscaler scale it to zero."""

    name: Annotated[str, Field(pattern=DNS_LABEL)]
    machine_type: str
    accelerator: AcceleratorName | None = None
    accelerator_count: Annotated[int, Field(ge=1)] = 1
    tpu_topology: Annotated[str | None, Field(pattern=r"^[0-9]+x[0-9]+(x[0-9]+)?$")] = None
    min_nodes: Annotated[int, Field(ge=0)] = 0
    max_nodes: Annotated[int, Field(ge=1)] = 1
    initial_nodes: Annotated[int | None, Field(ge=0)] = None
    """Nodes created with the pool. Default: ``minNodes`` for an accelerator pool (0 unless raised:
    the pool is created empty, so a quota of 0 or a stockout cannot fail the ``up``, and the cluster
    autoscaler adds nodes for pending model pods), at least 1 for a CPU pool."""
    spot: bool = False
    """Spot VMs: far cheaper, but preemptible at any time with 30 s notice and not covered by
    reservations; a preempted model server is down until the autoscaler finds capacity again."""
    reservation: Annotated[str | None, Field(pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")] = None
    """Name of a Compute Engine reservation (same project and zone) the pool's nodes consume
    (``SPECIFIC_RESERVATION``): capacity that exists when the autoscaler asks, paid whether used or not."""
    disk_size_gb: Annotated[int, Field(ge=20)] = 100

    @model_validator(mode="after")
    def _consistent(self) -> NodePool:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"minNodes ({self.min_nodes}) is greater than maxNodes ({self.max_nodes})")
        if not self.min_nodes <= self.initial_node_count <= self.max_nodes:
            raise ValueError(
                f"initialNodes ({self.initial_node_count}) must lie within minNodes..maxNodes "
                f"({self.min_nodes}..{self.max_nodes})"
            )
        if self.spot and self.reservation is not None:
            raise _FieldError(
                ("reservation",), "Spot VMs do not consume reservations; set spot or a reservation"
            )
        family = ACCELERATORS[self.accelerator].family if self.accelerator else None
        if family == "tpu" and self.tpu_topology is None:
            raise ValueError(f"a {self.accelerator} pool needs tpuTopology (e.g. 1x1)")
        if family != "tpu" and self.tpu_topology is not None:
            raise ValueError("tpuTopology is only meaningful for a TPU accelerator")
        if family == "tpu" and not self.machine_type.startswith("ct"):
            raise ValueError(f"machineType {self.machine_type!r} is not a TPU machine type (ct*)")
        return self

    @property
    def family(self) -> Literal["cpu", "gpu", "tpu"]:
        return ACCELERATORS[self.accelerator].family if self.accelerator else "cpu"

    @property
    def initial_node_count(self) -> int:
        """``initialNodes`` if set; else ``minNodes`` (accelerators) or ``max(1, minNodes)`` (CPU)."""
        if self.initial_nodes is not None:
            return self.initial_nodes
        return self.min_nodes if self.accelerator else max(1, self.min_nodes)


class Autoscaling(_Model):
    """KEDA scales the model's Deployment on the gateway's own signals (see docs/autoscaling.md)."""

    min_replicas: Annotated[int, Field(ge=0)] = 1
    """``0``: scale to zero after ``idleSeconds`` without requests; the first request wakes it."""
    max_replicas: Annotated[int, Field(ge=1)] = 1
    target_queue_per_replica: Annotated[float, Field(gt=0)] = 2
    """Requests waiting in the EPP's flow-control queue for this model, per replica."""
    target_waiting_per_replica: Annotated[float, Field(gt=0)] = 4
    """Requests waiting in the pods' own queues (vLLM's num_requests_waiting), per replica."""
    target_kv_cache_usage: Annotated[float, Field(gt=0, le=1)] = 0.8
    """Average KV-cache usage (0-1) across the model's pods."""
    activation_queue: Annotated[float, Field(ge=0)] = 0
    """Queued requests above which a model at zero wakes (0: the first one)."""
    idle_seconds: Annotated[int, Field(ge=1)] = 600
    """Without requests this long, a model with ``minReplicas: 0`` goes to zero (KEDA's cooldownPeriod)."""
    wake_timeout: Annotated[int, Field(ge=1)] = 480
    """Seconds a request waits in the EPP for a model with no pod to wake before a 503 (the EPP's
    ``flowControl.noEndpointRequestTTL``); must be shorter than ``gateway.requestTimeoutSec``."""
    polling_seconds: Annotated[int, Field(ge=1, le=300)] = 15
    """How often KEDA queries the metrics (its pollingInterval)."""

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise _FieldError(
                ("minReplicas",),
                f"{self.min_replicas} is greater than maxReplicas ({self.max_replicas})",
            )
        return self


class Objective(_Model):
    """An InferenceObjective: requests naming it (``x-llm-d-inference-objective``) get its priority."""

    name: Annotated[str, Field(pattern=DNS_LABEL)]
    priority: StrictInt
    """Higher first; negative allowed (the flow-control queue sheds lower priorities first)."""


class ModelSpec(_Model):
    """One model served by vLLM, its pool and its hardware."""

    name: Annotated[str, Field(pattern=DNS_LABEL)]
    """Short Kubernetes name (labels, object names); the served name goes in headers instead."""
    served_name: str
    """The name clients send in the request's ``model`` field (and BBR puts in the header)."""
    hugging_face_id: str
    image: Annotated[str, Field(min_length=1)]
    """``name:tag`` (resolved to its digest at preview, deployed as ``name:tag@sha256:...``) or an
    already pinned ``name[:tag]@sha256:<digest>``."""
    gated: bool | None = None
    """The weights need an accepted licence and ``hfToken``; default: true for known gated ids."""
    args: list[str] = Field(default_factory=list)
    replicas: Annotated[int, Field(ge=0)] = 1
    accelerator: AcceleratorName
    accelerator_count: Annotated[int, Field(ge=1)] = 1
    resources: Resources = Resources(cpu="3", memory="12Gi", ephemeral_storage="20Gi")
    shm_size: Annotated[str, Field(pattern=QUANTITY)] = "2Gi"
    autoscaling: Autoscaling | None = None
    """KEDA owns the replica count when set (``replicas`` must then be left out)."""
    objectives: list[Objective] = Field(default_factory=list)

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> ModelSpec:
        if self.autoscaling is not None and "replicas" in self.model_fields_set:
            raise _FieldError(("replicas",), "KEDA sets the replicas of an autoscaled model; remove replicas")
        _unique(self.objectives, "name", "objectives")
        return self

    @field_validator("served_name")
    @classmethod
    def _header_safe(cls, value: str) -> str:
        return _matching(
            HEADER_VALUE,
            value,
            "is not a valid HTTP header value for X-Gateway-Base-Model-Name "
            "(1-256 visible ASCII characters, no spaces or control characters)",
        )

    @field_validator("image")
    @classmethod
    def _pinned_or_tagged(cls, value: str) -> str:
        if PINNED_IMAGE.fullmatch(value):
            return value
        tagged = TAGGED_IMAGE.fullmatch(value)
        if tagged is None:
            raise ValueError(
                f"{value!r} is neither name:tag (resolved to its digest at preview) nor pinned by digest "
                "(name[:tag]@sha256:<64 hex digits>)"
            )
        if tagged["tag"] in MOVING_TAGS:
            raise ValueError(f"{value!r}: the tag {tagged['tag']!r} names no release; use a version tag")
        return value

    @property
    def requires_token(self) -> bool:
        """Gated (said so, or a known gated id): the server needs ``hfToken`` to download the weights."""
        if self.gated is not None:
            return self.gated
        return self.hugging_face_id.startswith(KNOWN_GATED_MODELS)

    @property
    def image_pinned(self) -> bool:
        return PINNED_IMAGE.fullmatch(self.image) is not None

    @field_validator("hugging_face_id")
    @classmethod
    def _hf_id(cls, value: str) -> str:
        return _matching(HUGGING_FACE_ID, value, "is not a Hugging Face model id of the form owner/name")


def endpoint_picker_yaml(config: Mapping[str, Any]) -> str:
    """The text of a stack's EndpointPickerConfig, as its ConfigMap hands it to the EPP."""
    return yaml.safe_dump(dict(config), sort_keys=False)


class EppSettings(_Model):
    """The Endpoint Picker of each pool: scheduling profile (or a full config) and its size."""

    profile: ProfileName = DEFAULT_PROFILE
    config: dict[str, Any] | None = None
    """A complete EndpointPickerConfig; when set it replaces the profile. Checked here by the EPP's
    own parser, on the very text its ConfigMap will hold, so what would crash-loop the pod after
    ``pulumi up`` fails ``pulumi preview`` instead, with the message the EPP would have logged."""
    failure_mode: Literal["FailOpen", "FailClose"] = "FailClose"
    replicas: Annotated[int, Field(ge=1)] = 2
    """Two by default, active-active, so losing one (a crash, a drained node) fails no pool. Each
    replica sees the pods' metrics (every replica scrapes every pod) but counts in flight only the
    requests it picked itself; the first choice for a prompt prefix is a rendezvous hash over the
    pool's endpoints, the same in every replica, and with several the replicas tell each other their
    picks over UDP (``epp.peers``: a headless Service and a Secret of the pool), so each learns every
    prefix placement as one replica would."""
    follow_answers_up_to: Annotated[int, Field(ge=0)] = 0
    """Streams each replica follows to their last byte, so a pod's load drops as soon as one ends
    rather than at its next scrape (the EPP's ``--follow-answers-up-to``): those of at most this many
    tokens; 0 (the default): none. An answer that is not streamed ends at its headers and needs no
    following. It pays where clients stream short answers and send their next request as soon as one
    ends, and costs the EPP about 0.2 ms of CPU per chunk of each followed stream
    (docs/scheduling.md, "Answer ends")."""
    resources: Resources = Resources(cpu="500m", memory="512Mi", ephemeral_storage="256Mi")

    @field_validator("config")
    @classmethod
    def _endpoint_picker_config(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                parse_config(endpoint_picker_yaml(value))
            except PickerConfigError as exc:
                raise ValueError(str(exc)) from None
        return value


class BbrSettings(_Model):
    """The Body-Based Router (per-model-pools mode only)."""

    replicas: Annotated[int, Field(ge=1)] = 2
    """Stateless and on every request's path under FailClose: two, so a restart or a drained node
    does not fail requests (a PodDisruptionBudget keeps one up)."""
    resources: Resources = Resources(cpu="500m", memory="256Mi", ephemeral_storage="256Mi")


class AuthSettings(_Model):
    """Who may call the gateway: API keys checked at the front door (the BBR), or nobody checks."""

    mode: Literal["api-keys", "none"] = "api-keys"
    """``api-keys`` (the default) needs the secret config ``apiKeys``; ``none`` is an explicit opt-out
    that the policy pack refuses on a gateway reachable from the internet."""


class TlsSettings(_Model):
    """HTTPS on 443: a Google-managed certificate for ``domain``, or a self-managed one for trials."""

    certificate: Literal["google-managed", "self-managed"] = "google-managed"
    """``google-managed``: Certificate Manager issues and renews a regional certificate for
    ``domain`` once its DNS authorization record exists (the stack output ``dnsRecords`` says
    which). ``self-managed``: the PEM chain and key come from the secret config values
    ``tlsCertificate`` and ``tlsPrivateKey`` and become a Kubernetes TLS Secret."""
    domain: Annotated[str | None, Field(pattern=HOSTNAME, max_length=253)] = None
    redirect_http: bool = True
    """Answer plain HTTP on 80 with a redirect to HTTPS (``false``: do not listen on 80 at all)."""

    @model_validator(mode="after")
    def _domain_for_managed(self) -> TlsSettings:
        if self.certificate == "google-managed" and self.domain is None:
            raise _FieldError(("domain",), "a google-managed certificate needs the domain it is issued for")
        return self


class GatewaySettings(_Model):
    """The regional Application Load Balancer in front of every model (external or VPC-internal)."""

    request_timeout_sec: Annotated[int, Field(ge=1, le=86400)] = 600
    network_tier: Literal["STANDARD", "PREMIUM"] = "STANDARD"
    visibility: Literal["external", "internal"] = "external"
    """``internal``: a regional internal load balancer (``gke-l7-rilb``), reachable from the VPC only."""
    auth: AuthSettings = AuthSettings()
    tls: TlsSettings | None = None
    allowed_source_ranges: list[str] = Field(default_factory=list)
    """Client CIDR ranges allowed through a Cloud Armor policy on every backend (empty: no policy)."""

    @field_validator("allowed_source_ranges")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for index, text in enumerate(value):
            try:
                ipaddress.ip_network(text)
            except ValueError as exc:
                raise _FieldError((index,), f"{text!r} is not a CIDR range ({exc})") from None
        if len(set(value)) != len(value):
            raise ValueError("lists a range more than once")
        return value

    @property
    def public(self) -> bool:
        return self.visibility == "external"


DEFAULT_PRICE_PER_ACCELERATOR_HOUR: Mapping[str, float] = {
    # On-demand list prices in USD per accelerator (GPU or TPU chip) per hour, for the cost panels.
    # Sources: cloud.google.com/compute/gpus-pricing (NVIDIA T4, us-central1: $0.35) and
    # cloud.google.com/tpu/pricing (TPU v6e, us-east5: $2.70 per chip-hour), as published in 2025;
    # written down 2026-12-04 without re-checking the pages. Prices vary by region and discounts:
    # set yours in platform.monitoring.pricePerAcceleratorHour.
    "nvidia-tesla-t4": 0.35,
    "tpu-v6e-slice": 2.70,
}

EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
PROMETHEUS_DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """Seconds in a Prometheus duration such as ``500ms``, ``2s`` or ``1m30s``."""
    return sum(int(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


class EmailReceiver(_Model):
    """Alert mail through an SMTP relay that accepts the cluster's mail (no SMTP auth)."""

    to: Annotated[list[Annotated[str, Field(pattern=EMAIL)]], Field(min_length=1)]
    smarthost: Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")]
    from_address: Annotated[str, Field(pattern=EMAIL)]


class MonitoringSettings(_Model):
    """What GKE collects and shows (GMP PodMonitorings, a dashboard) and when it alerts (GMP Rules).

    Alerts go to ``email`` and/or a webhook whose URL is the secret config value
    ``alertWebhookUrl``; with neither they show in the managed Alertmanager (docs/monitoring.md)."""

    enabled: bool = True
    ttft_p95_slo: dict[str, str] = Field(default_factory=dict)
    """A TTFT p95 SLO per served model name, as a duration (``2s``, ``800ms``)."""
    error_ratio: Annotated[float, Field(gt=0, le=1)] = 0.05
    """The share of 5xx answers above which the gateway alerts."""
    price_per_accelerator_hour: dict[AcceleratorName, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict
    )
    """USD per accelerator-hour, over ``DEFAULT_PRICE_PER_ACCELERATOR_HOUR``."""
    email: EmailReceiver | None = None

    @field_validator("ttft_p95_slo")
    @classmethod
    def _durations(cls, value: dict[str, str]) -> dict[str, str]:
        for model, text in value.items():
            if not PROMETHEUS_DURATION.fullmatch(text) or not duration_seconds(text):
                raise _FieldError((model,), f"{text!r} is not a duration (e.g. 800ms, 2s, 1m)")
        return value

    def price(self, accelerator: AcceleratorName) -> float:
        default = DEFAULT_PRICE_PER_ACCELERATOR_HOUR.get(accelerator, 0.0)
        return self.price_per_accelerator_hour.get(accelerator, default)


class PlatformConfig(_Model):
    """The whole stack: where it runs, its node pools, its models and how requests are routed."""

    project: Annotated[str, Field(pattern=r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")]
    region: Annotated[str, Field(pattern=r"^[a-z]+-[a-z]+[0-9]+$")]
    zone: Annotated[str, Field(pattern=r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")]
    cluster_name: Annotated[str, Field(pattern=DNS_LABEL)]
    namespace: Annotated[str, Field(pattern=DNS_LABEL)] = "llm-gateway"
    release_channel: Literal["RAPID", "REGULAR", "STABLE"] = "REGULAR"
    """GKE picks and upgrades the version within this channel; the program pins none. At preview the
    versions the channel offers in ``zone`` are checked against what the stack needs."""
    wait_for_models: bool = False
    """``false``: ``pulumi up`` does not wait for model servers to become ready (their nodes may take
    minutes to appear, or not at all without quota); ``true``: it waits, up to 60 minutes each."""
    enable_apis: bool = True
    """Enable the Google APIs the stack uses (left enabled on destroy)."""
    private_nodes: bool = True
    """Nodes without external IPs; they reach registries and the Hugging Face Hub through Cloud NAT."""
    docker_hub_mirror: bool = True
    """Pull Docker Hub model images through an Artifact Registry remote repository (cached in the
    region, no Docker Hub rate limits, allowed by "Artifact Registry only" org policies)."""
    deletion_protection: bool = True
    artifact_repository: Annotated[str, Field(pattern=DNS_LABEL)] = "llm-gateway"
    network: Network = Network()
    node_pools: Annotated[list[NodePool], Field(min_length=1)]
    models: Annotated[list[ModelSpec], Field(min_length=1)]
    routing_mode: RoutingMode = "per-model-pools"
    inference_pool_crd: InferencePoolCrdSource = "gke-managed"
    """Where the InferencePool CRD comes from.

    ``gke-managed`` (default): GKE installs and upgrades the GA CRD itself from
    1.34.0-gke.1626000 on, so the program creates no CRD, checks at preview that the release
    channel offers at least that version in the zone (and asks for it when the channel's default is
    older), and orders every InferencePool after the cluster. Creating
    the CRD there would fail with AlreadyExists, and owning it would let ``pulumi destroy`` delete a
    GKE-managed CRD together with every InferencePool in the cluster.

    ``install``: the program applies the vendored upstream v1.5.0 CRD and orders every
    InferencePool after it -- for clusters that do not ship it (an older GKE version pinned by
    policy, say). The CRD is retained on delete, so switching such a stack to ``gke-managed`` later
    makes Pulumi forget it instead of deleting it and every pool with it.
    """
    epp: EppSettings = EppSettings()
    bbr: BbrSettings = BbrSettings()
    gateway: GatewaySettings = GatewaySettings()
    monitoring: MonitoringSettings = MonitoringSettings()

    @model_validator(mode="after")
    def _slo_models(self) -> PlatformConfig:
        for model in self.monitoring.ttft_p95_slo:
            if model not in self.served_names:
                served = ", ".join(self.served_names)
                raise _FieldError(("monitoring", "ttftP95Slo", model),
                                  f"is not a served model name of this stack ({served})")
        return self

    @model_validator(mode="after")
    def _coherent(self) -> PlatformConfig:
        if not self.zone.startswith(self.region + "-"):
            raise _FieldError(("zone",), f"{self.zone!r} is not a zone of region {self.region!r}")
        _unique(self.node_pools, "name", "nodePools")
        _unique(self.models, "name", "models")
        _unique(self.models, "served_name", "models", alias="servedName")
        if not any(pool.accelerator is None for pool in self.node_pools):
            raise _FieldError(("nodePools",), "needs a CPU pool (no accelerator) for the gateway workloads")
        offered = {pool.accelerator: pool for pool in self.node_pools if pool.accelerator}
        for index, model in enumerate(self.models):
            pool = offered.get(model.accelerator)
            if pool is None:
                available = ", ".join(f"{p.name}: {a}" for a, p in offered.items()) or "none"
                raise _FieldError(
                    ("models", index, "accelerator"),
                    f"{model.accelerator} is not provided by any node pool of this stack "
                    f"(accelerator pools: {available})",
                )
            if model.accelerator_count > pool.accelerator_count:
                raise _FieldError(
                    ("models", index, "acceleratorCount"),
                    f"{model.accelerator_count} exceeds the {pool.accelerator_count} "
                    f"{model.accelerator} per node of pool {pool.name}",
                )
        _check_autoscaling(self)
        _check_queue_ttls(self)
        return self

    @property
    def required_gke_version(self) -> str | None:
        """The lowest control-plane version the stack works on: the one that ships the CRD, when GKE
        manages it. A requirement checked at preview, not a version asked for."""
        return GKE_MANAGED_INFERENCE_POOL_CRD_VERSION if self.inference_pool_crd == "gke-managed" else None

    @property
    def serves_on_tpu(self) -> bool:
        """Whether a model runs on TPUs (their servers need uid 0: the namespace enforces ``baseline``)."""
        return any(ACCELERATORS[model.accelerator].family == "tpu" for model in self.models)

    @property
    def gated_models(self) -> list[tuple[int, ModelSpec]]:
        """``(index, model)`` of every model whose weights need ``hfToken``."""
        return [(index, model) for index, model in enumerate(self.models) if model.requires_token]

    @property
    def served_names(self) -> list[str]:
        """Every name a client may put in ``model`` (what an API key's ``models`` may list)."""
        return [model.served_name for model in self.models]

    def pool_for(self, model: ModelSpec) -> NodePool:
        """The node pool a model's pods land on (the one offering its accelerator)."""
        return next(pool for pool in self.node_pools if pool.accelerator == model.accelerator)


class _FieldError(ValueError):
    """A cross-field rule broken at a known path below ``platform``."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class ConfigError(ValueError):
    """The stack's config is invalid; ``errors`` lists ``platform.<path>: <problem>`` lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid stack config:\n  " + "\n  ".join(errors))
        self.errors = errors


def _matching(pattern: re.Pattern[str], value: str, problem: str) -> str:
    """``value`` if ``pattern`` matches all of it, else ValueError ``'<value>' <problem>``."""
    if not pattern.fullmatch(value):
        raise ValueError(f"{value!r} {problem}")
    return value


def _unique(items: list[Any], attribute: str, field: str, alias: str | None = None) -> None:
    seen: dict[Any, int] = {}
    for index, item in enumerate(items):
        value = getattr(item, attribute)
        if value in seen:
            raise _FieldError(
                (field, index, alias or attribute),
                f"{value!r} is already used by {field}[{seen[value]}]",
            )
        seen[value] = index


def _check_queue_ttls(cfg: PlatformConfig) -> None:
    """The EPP's flow-control queue holds a request up to its TTLs before the gateway sends it on:
    each must be shorter than ``gateway.requestTimeoutSec``, or the load balancer ends a request the
    queue still holds, and the client gets the load balancer's error instead of the EPP's 429/503
    with Retry-After. The queue is on when the EPP's config turns the ``flowControl`` gate on, or
    for a pool with a model at zero pods (whose ``noEndpointRequestTTL`` is its ``wakeTimeout``,
    checked with it)."""
    picker = parse_config(endpoint_picker_yaml(cfg.epp.config)) if cfg.epp.config is not None else (
        load_profile(cfg.epp.profile)
    )  # fmt: skip
    waking = any(m.autoscaling is not None and m.autoscaling.min_replicas == 0 for m in cfg.models)
    flow = picker.flow_control_config()
    ttls: list[tuple[str, float]] = []
    if flow is not None:
        ttls = [("defaultRequestTTL", flow.default_request_ttl),
                ("noEndpointRequestTTL", flow.no_endpoint_request_ttl)]
    elif waking:
        flow = picker.flow_control or FlowControlConfig.model_validate({})
        ttls = [("defaultRequestTTL", flow.default_request_ttl)]
    timeout = cfg.gateway.request_timeout_sec
    for name, ttl in ttls:
        given = "0s (no limit)" if math.isinf(ttl) else f"{ttl:g}s"
        if ttl >= timeout:
            raise _FieldError(
                ("epp", "config", "flowControl", name),
                f"{given} is not shorter than gateway.requestTimeoutSec ({timeout}s): the load "
                "balancer would end a request the EPP's queue still holds",
            )


def _check_autoscaling(cfg: PlatformConfig) -> None:
    """Autoscaling that the cluster and the Gateway can honour; InferenceObjective names unique."""
    timeout = cfg.gateway.request_timeout_sec
    for index, model in enumerate(cfg.models):
        scaling = model.autoscaling
        if scaling is None:
            continue
        if cfg.namespace == KEDA_NAMESPACE:
            raise _FieldError(("namespace",), f"{KEDA_NAMESPACE!r} is KEDA's own namespace; choose another")
        where = ("models", index, "autoscaling")
        if scaling.wake_timeout >= timeout:
            raise _FieldError(
                (*where, "wakeTimeout"),
                f"{scaling.wake_timeout}s is not shorter than gateway.requestTimeoutSec ({timeout}s), "
                "the load balancer's limit for the wait and the answer together",
            )
        pool = cfg.pool_for(model)
        if scaling.min_replicas == 0 and pool.min_nodes > 0:
            raise _FieldError(
                (*where, "minReplicas"),
                f"0 saves nothing: node pool {pool.name} keeps minNodes {pool.min_nodes} "
                "(set its minNodes to 0 so its nodes go too)",
            )
        capacity = pool.max_nodes * (pool.accelerator_count // model.accelerator_count)
        if scaling.max_replicas > capacity:
            raise _FieldError(
                (*where, "maxReplicas"),
                f"{scaling.max_replicas} exceeds the {capacity} pods node pool {pool.name} can hold "
                f"(maxNodes {pool.max_nodes})",
            )
    owners: dict[str, int] = {}
    for index, model in enumerate(cfg.models):
        for position, objective in enumerate(model.objectives):
            if objective.name in owners:
                raise _FieldError(
                    ("models", index, "objectives", position, "name"),
                    f"{objective.name!r} is already an objective of models[{owners[objective.name]}] "
                    "(InferenceObjectives share the namespace)",
                )
            owners[objective.name] = index


def parse_platform_config(raw: object) -> PlatformConfig:
    """Validate the raw config object; raise :class:`ConfigError` naming every bad field."""
    if not isinstance(raw, Mapping):
        raise ConfigError([f"{CONFIG_KEY}: expected an object, got {type(raw).__name__}"])
    try:
        return PlatformConfig.model_validate(raw)
    except ValidationError as exc:
        errors: list[str] = []
        for problem in problems(exc):
            if isinstance(problem.cause, _FieldError):
                where = field_path(problem.loc + problem.cause.path, CONFIG_KEY)
                errors.append(f"{where}: {problem.cause.message}")
                continue
            message = problem.message
            if problem.kind == "extra_forbidden":
                message = "unknown field (check the spelling; fields are camelCase)"
            elif problem.kind == "literal_error":
                message = f"{problem.input!r} is not allowed; {message.lower()}"
            errors.append(f"{problem.path(CONFIG_KEY)}: {message}")
        raise ConfigError(errors) from None
