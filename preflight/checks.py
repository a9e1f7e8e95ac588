"""The checks of ``make preflight``: what a first ``pulumi up`` needs, asked of Google, Hugging Face
and the image registry with the user's own credentials, before anything is created.

Every check returns :class:`Finding` lines; a failed one says what to do about it. All HTTP goes
through an :class:`Http` (tests hand in recorded answers; nothing here opens a socket by itself).
Secrets (the access token, the Hugging Face token) go into request headers only, never into a
finding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from components.apis import required_apis
from components.config import ConfigError, NodePool, PlatformConfig
from components.mirror import docker_hub_name
from components.versions import ChannelVersions, choose_master_version, version_key

Status = Literal["ok", "warn", "fail"]

CRM = "https://cloudresourcemanager.googleapis.com/v3"
SERVICE_USAGE = "https://serviceusage.googleapis.com/v1"
COMPUTE = "https://compute.googleapis.com/compute/v1"
CONTAINER = "https://container.googleapis.com/v1"
HUGGING_FACE = "https://huggingface.co"
DOCKER_HUB_AUTH = "https://auth.docker.io/token"
DOCKER_HUB_REGISTRY = "https://registry-1.docker.io"
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
BOOTSTRAP_APIS = (
    "serviceusage.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "container.googleapis.com",
)
"""Needed before the first ``pulumi preview``: enabling the others (Service Usage, Resource Manager),
and the preview's own question to GKE about the channel's versions (Kubernetes Engine). The program
enables the rest itself."""

QUOTA_METRICS: Mapping[str, str] = {
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
    "nvidia-h100-80gb": "NVIDIA_H100_GPUS",
    "tpu-v5-lite-podslice": "TPU_LITE_PODSLICE_V5",
    "tpu-v6e-slice": "TPU_V6E",
}
"""Compute Engine regional quota metric of each accelerator (Spot VMs: ``PREEMPTIBLE_`` + metric)."""


@dataclass(frozen=True)
class Response:
    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


class Http(Protocol):
    def __call__(self, method: str, url: str, *, headers: Mapping[str, str] | None = None) -> Response: ...


@dataclass(frozen=True)
class Finding:
    status: Status
    check: str
    message: str
    fix: str = ""


@dataclass(frozen=True)
class Context:
    """What the checks need: the stack's config, HTTP, a Google access token, the HF token if any."""

    config: PlatformConfig
    http: Http
    google_token: str
    hf_token: str | None


def _google(ctx: Context, url: str) -> Response:
    return ctx.http("GET", url, headers={"Authorization": f"Bearer {ctx.google_token}"})


def _error(response: Response) -> str:
    body = response.body if isinstance(response.body, Mapping) else {}
    message = body.get("error", {}).get("message") if isinstance(body.get("error"), Mapping) else None
    return f"HTTP {response.status}" + (f": {message}" if message else "")


def check_project(ctx: Context) -> list[Finding]:
    project = ctx.config.project
    response = _google(ctx, f"{CRM}/projects/{project}")
    if response.status == 200:
        state = response.body.get("state", "ACTIVE") if isinstance(response.body, Mapping) else "ACTIVE"
        if state != "ACTIVE":
            return [Finding("fail", "project", f"{project} is {state}", "use an active project")]
        return [Finding("ok", "project", f"{project} exists and you can read it")]
    return [
        Finding(
            "fail",
            "project",
            f"cannot read project {project} ({_error(response)})",
            "set platform.project in the stack file to your project id, and check that "
            "`gcloud auth application-default login` used an account with access to it",
        )
    ]


def check_apis(ctx: Context) -> list[Finding]:
    cfg = ctx.config
    tls = cfg.gateway.tls
    managed = tls is not None and tls.certificate == "google-managed"
    wanted = list(dict.fromkeys(BOOTSTRAP_APIS + required_apis(managed)))  # each once, in order
    findings: list[Finding] = []
    for api in wanted:
        response = _google(ctx, f"{SERVICE_USAGE}/projects/{cfg.project}/services/{api}")
        enabled = response.status == 200 and response.body.get("state") == "ENABLED"
        enable = f"gcloud services enable {api} --project {cfg.project}"
        if enabled:
            findings.append(Finding("ok", "api", f"{api} is enabled"))
        elif response.status != 200:
            findings.append(
                Finding("fail", "api", f"cannot read the state of {api} ({_error(response)})", enable)
            )
        elif api in BOOTSTRAP_APIS or not cfg.enable_apis:
            findings.append(Finding("fail", "api", f"{api} is disabled", enable))
        else:
            findings.append(Finding("ok", "api", f"{api} is disabled; `pulumi up` enables it (enableApis)"))
    return findings


def _needed(cfg: PlatformConfig, pool: NodePool) -> int:
    """Chips the pool's models ask for at their configured replicas (what the autoscaler will add)."""
    return sum(m.replicas * m.accelerator_count for m in cfg.models if m.accelerator == pool.accelerator)


def check_quota(ctx: Context) -> list[Finding]:
    cfg = ctx.config
    pools = [pool for pool in cfg.node_pools if pool.accelerator is not None]
    if not pools:
        return []
    response = _google(ctx, f"{COMPUTE}/projects/{cfg.project}/regions/{cfg.region}")
    if response.status != 200:
        return [
            Finding(
                "fail",
                "quota",
                f"cannot read the quotas of {cfg.region} ({_error(response)})",
                "enable compute.googleapis.com, or ask for roles/compute.viewer on the project",
            )
        ]
    quotas = {q["metric"]: q for q in response.body.get("quotas", []) if "metric" in q}
    findings: list[Finding] = []
    for pool in pools:
        assert pool.accelerator is not None
        metric = ("PREEMPTIBLE_" if pool.spot else "") + QUOTA_METRICS[pool.accelerator]
        needed = _needed(cfg, pool)
        quota = quotas.get(metric)
        where = f"pool {pool.name} ({pool.accelerator}{', Spot' if pool.spot else ''}) in {cfg.region}"
        if quota is None:
            findings.append(
                Finding(
                    "warn",
                    "quota",
                    f"{where}: the region lists no {metric} quota; the accelerator may not be offered there",
                    f"check the Quotas page of {cfg.project} for {pool.accelerator} in {cfg.region}, "
                    "or move the stack to a region that offers it",
                )
            )
            continue
        free = int(float(quota.get("limit", 0)) - float(quota.get("usage", 0)))
        if free >= needed:
            findings.append(
                Finding("ok", "quota", f"{where}: {metric} has {free} free, models need {needed}")
            )
        elif pool.reservation is not None:
            findings.append(
                Finding("ok", "quota", f"{where}: {metric} has {free} free; reservation {pool.reservation}")
            )
        else:
            alternative = (
                "" if pool.spot else " or set spot: true on the pool (a separate, preemptible quota)"
            )
            findings.append(
                Finding(
                    "fail",
                    "quota",
                    f"{where}: {metric} has {free} free, the models need {needed}; their pods would stay "
                    "Pending (the rest of the platform still comes up)",
                    f"request a quota increase for {metric} in {cfg.region} (IAM & Admin > Quotas)"
                    + alternative,
                )
            )
    return findings


def check_versions(ctx: Context) -> list[Finding]:
    cfg = ctx.config
    if cfg.required_gke_version is None:
        return [Finding("ok", "gke", "inferencePoolCrd: install; any version the channel offers will do")]
    response = _google(ctx, f"{CONTAINER}/projects/{cfg.project}/locations/{cfg.zone}/serverConfig")
    if response.status != 200:
        return [
            Finding(
                "fail",
                "gke",
                f"cannot read GKE's versions in {cfg.zone} ({_error(response)})",
                f"gcloud services enable container.googleapis.com --project {cfg.project}",
            )
        ]
    channels = {c.get("channel"): c for c in response.body.get("channels", [])}
    channel = channels.get(cfg.release_channel, {})
    valid = sorted(channel.get("validVersions", []), key=version_key)
    offered = ChannelVersions(
        cfg.release_channel, channel.get("defaultVersion"), valid[-1] if valid else None
    )
    try:
        asked = choose_master_version(cfg, offered, cfg.zone)
    except ConfigError as exc:
        return [
            Finding(
                "fail",
                "gke",
                exc.errors[0],
                "set platform.releaseChannel: RAPID, or inferencePoolCrd: install",
            )
        ]
    version = asked or offered.default
    return [
        Finding(
            "ok",
            "gke",
            f"{cfg.release_channel} in {cfg.zone} offers {version} (>= {cfg.required_gke_version})",
        )
    ]


def check_models(ctx: Context) -> list[Finding]:
    findings: list[Finding] = []
    for index, model in ctx.config.gated_models:
        where = f"models[{index}] {model.hugging_face_id}"
        if ctx.hf_token is None:
            findings.append(
                Finding(
                    "fail",
                    "hugging face",
                    f"{where} is gated and no token was given",
                    "export HF_TOKEN=hf_... (or `pulumi config set --secret hfToken hf_...`) and run again",
                )
            )
            continue
        url = f"{HUGGING_FACE}/{model.hugging_face_id}/resolve/main/config.json"
        response = ctx.http("HEAD", url, headers={"Authorization": f"Bearer {ctx.hf_token}"})
        if response.status in (200, 302, 307):
            findings.append(Finding("ok", "hugging face", f"{where}: the token can read the weights"))
        elif response.status in (401, 403):
            findings.append(
                Finding(
                    "fail",
                    "hugging face",
                    f"{where}: the token may not read it (HTTP {response.status})",
                    f"accept the licence at {HUGGING_FACE}/{model.hugging_face_id} with the token's account, "
                    "and give the token read access to gated repositories",
                )
            )
        else:
            findings.append(
                Finding("fail", "hugging face", f"{where}: HTTP {response.status}", "check the model id")
            )
    return findings


def _docker_hub(image: str) -> tuple[str, str] | None:
    """``(repository, tag or digest)`` of a Docker Hub reference, else None (another registry)."""
    name = docker_hub_name(image)
    if name is None:
        return None
    if "@" in name:
        repository, _, digest = name.partition("@")
        return repository.rpartition(":")[0] or repository, digest
    repository, _, tag = name.rpartition(":")
    return repository, tag


def check_images(ctx: Context) -> list[Finding]:
    findings: list[Finding] = []
    for image in sorted({model.image for model in ctx.config.models}):
        hub = _docker_hub(image)
        if hub is None:
            findings.append(Finding("warn", "image", f"{image}: not on Docker Hub; not checked here"))
            continue
        repository, tag = hub
        token = ctx.http(
            "GET", f"{DOCKER_HUB_AUTH}?service=registry.docker.io&scope=repository:{repository}:pull"
        )
        bearer = token.body.get("token") if token.status == 200 and isinstance(token.body, Mapping) else None
        headers = {"Accept": MANIFEST_TYPES} | ({"Authorization": f"Bearer {bearer}"} if bearer else {})
        response = ctx.http("HEAD", f"{DOCKER_HUB_REGISTRY}/v2/{repository}/manifests/{tag}", headers=headers)
        if response.status == 200:
            digest = response.headers.get("Docker-Content-Digest", "?")
            findings.append(Finding("ok", "image", f"{image} exists ({digest})"))
        else:
            findings.append(
                Finding(
                    "fail",
                    "image",
                    f"{image}: the registry answers HTTP {response.status} for the tag",
                    f"pick a tag that exists (hub.docker.com/r/{repository}/tags) "
                    "and set it in the stack file",
                )
            )
    return findings


CHECKS: tuple[Callable[[Context], list[Finding]], ...] = (
    check_project,
    check_apis,
    check_quota,
    check_versions,
    check_models,
    check_images,
)


def run_checks(ctx: Context, checks: Iterable[Callable[[Context], list[Finding]]] = CHECKS) -> list[Finding]:
    return [finding for check in checks for finding in check(ctx)]
