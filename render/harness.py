"""Run the Pulumi program against mocks and record every resource it registers.

No Pulumi CLI, no plugins, no cloud: :func:`render_stack` reads ``Pulumi.<stack>.yaml`` from the
repository root, runs ``__main__.py`` under :func:`pulumi.runtime.set_mocks` (``preview=False``, so
every output resolves) and records each ``RegisterResource`` request the program sends -- type,
name, parent, dependencies, resolved inputs -- through a :class:`MockMonitor` subclass (the
``Mocks.new_resource`` hook sees neither parents nor dependencies). Each run gets a fresh
``contextvars`` context and event loop, so Pulumi's ambient state never leaks from one run to the
next and several runs work in one process.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import hashlib
import json
import runpy
import secrets as token_source
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.stack import run_pulumi_func

REPO_ROOT = Path(__file__).resolve().parents[1]
PROGRAM = REPO_ROOT / "__main__.py"
PLATFORM_KEY = "platform"
API_KEYS_KEY = "apiKeys"


def placeholder_api_keys() -> str:
    """A key list standing in for the stack's encrypted ``apiKeys`` (a mocked run cannot decrypt it):
    one entry with a fresh random key, so nothing rendered is a key anyone could use."""
    return json.dumps([{"name": "placeholder", "key": token_source.token_urlsafe(32)}])
HF_TOKEN_KEY = "hfToken"

ENGINE_VERSIONS_TOKEN = "gcp:container/getEngineVersions:getEngineVersions"
REGISTRY_IMAGE_TOKEN = "docker:index/getRegistryImage:getRegistryImage"
MOCK_ENGINE_VERSIONS: dict[str, Any] = {
    "releaseChannelDefaultVersion": {
        "RAPID": "1.35.0-gke.1795000",
        "REGULAR": "1.34.1-gke.3971000",
        "STABLE": "1.33.5-gke.2019000",
    },
    "releaseChannelLatestVersion": {
        "RAPID": "1.35.1-gke.1396000",
        "REGULAR": "1.34.1-gke.3971000",
        "STABLE": "1.34.0-gke.1662000",
    },
    "validMasterVersions": ["1.35.1-gke.1396000", "1.34.1-gke.3971000", "1.33.5-gke.2019000"],
}
"""What a mocked ``get_engine_versions`` answers by default (shaped like GKE's getServerConfig)."""


def mock_digest(image: str) -> str:
    """The digest a mocked registry answers for ``image`` (stable, distinct per reference)."""
    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


def placeholder_hf_token() -> str:
    """A token standing in for an encrypted ``hfToken`` (random, so it can never read anything)."""
    return "hf_placeholder_" + token_source.token_urlsafe(16)
SECRET_SIG = rpc._special_secret_sig
SIG_KEY = rpc._special_sig_key


@dataclass(frozen=True)
class RegisteredResource:
    """One ``RegisterResource`` request, as the engine would have received it."""

    type: str
    """Type token, e.g. ``kubernetes:apps/v1:Deployment`` or ``gke-llm-gateway:index:Platform``."""
    name: str
    urn: str
    props: dict[str, Any]
    """Resolved inputs as plain Python (camelCase wire names, secrets unwrapped)."""
    parent: str | None
    """URN of the parent resource (the stack's URN for top-level resources)."""
    dependencies: list[str]
    """URNs this resource is ordered after: its ``depends_on`` plus the resources its inputs come from."""
    custom: bool
    """True for a provider-managed resource, False for a ComponentResource."""
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    """Per input property, the URNs its value came from (the implicit part of ``dependencies``)."""
    secret_paths: tuple[str, ...] = ()
    """Dotted paths of the inputs that were Pulumi secrets, e.g. ``stringData.token``."""
    provider: str | None = None
    """Provider reference (``urn::id``) the resource was registered with, if explicit."""
    retain_on_delete: bool = False
    """True when deleting it from the program only removes it from the state (``retain_on_delete``)."""
    ignore_changes: tuple[str, ...] = ()
    """Inputs whose later changes the engine ignores (``ignore_changes``)."""
    delete_timeout: str | None = None
    """The ``custom_timeouts`` delete timeout, when set (e.g. ``45m``)."""


@dataclass(frozen=True)
class StackRun:
    """The result of one mocked run of a stack."""

    stack: str
    resources: list[RegisteredResource]
    outputs: dict[str, Any]
    """Stack outputs (``pulumi.export``), resolved."""
    secret_outputs: frozenset[str]
    """Names of the outputs that are secrets."""
    error: BaseException | None = None
    """What the program raised (for example a config error), when ``check=False``."""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """The invokes the program made (token, arguments), in order."""


def load_stack_config(stack: str, root: Path = REPO_ROOT) -> tuple[str, dict[str, Any]]:
    """The project name and the config map of ``Pulumi.<stack>.yaml`` (keys fully qualified)."""
    project_file = root / "Pulumi.yaml"
    stack_file = root / f"Pulumi.{stack}.yaml"
    if not stack_file.is_file():
        available = sorted(
            p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in root.glob("Pulumi.*.yaml")
        )
        raise FileNotFoundError(f"no stack file {stack_file.name} in {root} (stacks: {', '.join(available)})")
    project = str(yaml.safe_load(project_file.read_text(encoding="utf-8"))["name"])
    document = yaml.safe_load(stack_file.read_text(encoding="utf-8")) or {}
    config: dict[str, Any] = {}
    for key, value in (document.get("config") or {}).items():
        qualified = key if ":" in key else f"{project}:{key}"
        if isinstance(value, Mapping) and set(value) == {"secure"}:
            continue  # encrypted with the stack's key; a mocked run cannot decrypt it
        config[qualified] = value
    return project, config


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def _config_value(value: Any) -> str:
    """Pulumi hands structured config to the program as JSON text."""
    return value if isinstance(value, str) else json.dumps(value)


def _plain(value: Any, path: str, secrets: list[str]) -> Any:
    """Deserialized RPC value -> plain Python, recording where secrets were."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            secrets.append(path)
            return _plain(value.get("value"), path, secrets)
        return {key: _plain(item, f"{path}.{key}" if path else key, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item, f"{path}[{index}]", secrets) for index, item in enumerate(value)]
    if isinstance(value, pulumi.Resource):
        return f"<resource {type(value).__name__}>"
    if isinstance(value, float) and value.is_integer():
        return int(value)  # the wire format (protobuf Struct) carries every number as a double
    return value


class PlatformMocks(pulumi_mocks.Mocks):
    """Cloud-side values the program reads back: IDs, endpoints, addresses, image digests; and the
    answers to its invokes (GKE's versions, a registry's digests), each call kept in :attr:`calls`."""

    def __init__(self, engine_versions: Mapping[str, Any] | None = None) -> None:
        self.engine_versions = dict(MOCK_ENGINE_VERSIONS if engine_versions is None else engine_versions)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        inputs = dict(args.inputs)
        outputs = dict(inputs)
        token = args.typ
        if token == "gcp:container/cluster:Cluster":
            outputs["endpoint"] = "203.0.113.10"
            outputs["masterAuth"] = {"clusterCaCertificate": "bW9jay1jbHVzdGVyLWNh"}
            location = f"projects/{inputs.get('project')}/locations/{inputs.get('location')}"
            return f"{location}/clusters/{inputs.get('name')}", outputs
        if token == "gcp:compute/address:Address":
            outputs["address"] = "203.0.113.20"
        elif token == "gcp:certificatemanager/dnsAuthorization:DnsAuthorization":
            outputs["dnsResourceRecords"] = [
                {
                    "name": f"_acme-challenge.{inputs.get('domain')}.",
                    "type": "CNAME",
                    "data": f"{args.name}.mock.authorize.certificatemanager.goog.",
                }
            ]
        elif token == "gcp:serviceaccount/account:Account":
            outputs["email"] = f"{inputs.get('accountId')}@{inputs.get('project')}.iam.gserviceaccount.com"
        elif token == "random:index/randomPassword:RandomPassword":
            length = int(inputs.get("length", 16))
            outputs["result"] = hashlib.sha256(args.name.encode()).hexdigest()[:length]
        elif token == "random:index/randomInteger:RandomInteger":
            low, high = int(inputs.get("min", 0)), int(inputs.get("max", 2**31))
            drawn = int(hashlib.sha256(args.name.encode()).hexdigest(), 16)
            outputs["result"] = low + drawn % (high - low + 1)
        elif token == "docker-build:index:Image":
            digest = "sha256:" + hashlib.sha256(args.name.encode()).hexdigest()
            tags = inputs.get("tags") or [f"mock.local/{args.name}:latest"]
            outputs["digest"] = digest
            outputs["ref"] = f"{tags[0]}@{digest}"
        return f"{args.name}-id", outputs

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.calls.append((args.token, dict(args.args)))
        if args.token == ENGINE_VERSIONS_TOKEN:
            return {"location": args.args.get("location"), **self.engine_versions}, []
        if args.token == REGISTRY_IMAGE_TOKEN:
            name = str(args.args.get("name"))
            return {"name": name, "sha256Digest": mock_digest(name), "id": name}, []
        if args.token == "gcp:organizations/getClientConfig:getClientConfig":
            return {
                "accessToken": "mock-access-token",
                "project": "mock-project",
                "region": "mock-region",
                "zone": "mock-zone",
                "id": "mock",
            }, []
        return {}, []


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """A mock monitor that also keeps each RegisterResource request, in arrival order."""

    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.recorded: list[RegisteredResource] = []
        self._lock = threading.Lock()

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        if request.type != "pulumi:pulumi:Stack":
            secrets: list[str] = []
            props = _plain(rpc.deserialize_properties(request.object), "", secrets)
            record = RegisteredResource(
                type=request.type,
                name=request.name,
                urn=response.urn,
                props=props,
                parent=request.parent or None,
                dependencies=list(request.dependencies),
                custom=bool(request.custom),
                property_dependencies={
                    key: list(deps.urns) for key, deps in request.propertyDependencies.items()
                },
                secret_paths=tuple(secrets),
                provider=request.provider or None,
                retain_on_delete=bool(request.retainOnDelete),
                ignore_changes=tuple(request.ignoreChanges),
                delete_timeout=(request.customTimeouts.delete or None) if request.customTimeouts else None,
            )
            with self._lock:
                self.recorded.append(record)
        return response


async def _resolve_outputs(outputs: Mapping[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
    values: dict[str, Any] = {}
    secret: set[str] = set()
    for name, value in outputs.items():
        output = pulumi.Output.from_input(value)
        values[name] = await output.future()
        if await output.is_secret():
            secret.add(name)
    return values, frozenset(secret)


def _run(
    stack: str,
    config: dict[str, str],
    secret_keys: list[str],
    project: str,
    engine_versions: Mapping[str, Any] | None = None,
) -> tuple[RecordingMonitor, dict[str, Any], frozenset[str], BaseException | None]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    monitor = RecordingMonitor(PlatformMocks(engine_versions))
    outputs: dict[str, Any] = {}
    secret_outputs: frozenset[str] = frozenset()
    error: BaseException | None = None
    try:
        pulumi.runtime.set_mocks(monitor.mocks, project=project, stack=stack, preview=False, monitor=monitor)
        pulumi.runtime.set_all_config(config, secret_keys)

        async def program() -> None:
            nonlocal outputs, secret_outputs
            runpy.run_path(str(PROGRAM), run_name="__main__")
            root = pulumi.runtime.get_root_resource()
            exported = getattr(root, "outputs", {}) if root is not None else {}
            outputs, secret_outputs = await _resolve_outputs(exported)

        try:
            loop.run_until_complete(run_pulumi_func(program))
        except Exception as exc:  # the program's own failure, reported to the caller
            error = exc
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)
    return monitor, outputs, secret_outputs, error


def render_stack(
    stack: str,
    config_overrides: Mapping[str, Any] | None = None,
    *,
    secrets: Mapping[str, str] | None = None,
    plain: Mapping[str, str] | None = None,
    check: bool = True,
    placeholder_keys: bool = True,
    placeholder_token: bool = True,
    engine_versions: Mapping[str, Any] | None = None,
) -> StackRun:
    """Run the program for ``stack`` against mocks.

    ``config_overrides`` is deep-merged into the ``platform`` config object (lists replace lists);
    ``secrets`` sets secret config values by key (``{"hfToken": "hf_..."}``), ``plain`` sets values
    that are not secrets. A stack's own ``apiKeys`` is encrypted, which a mocked run cannot read: unless
    ``secrets`` sets it (or ``placeholder_keys`` is False) :func:`placeholder_api_keys` stands in.
    Likewise a stack with a gated model gets :func:`placeholder_hf_token` unless ``secrets`` sets one
    (or ``placeholder_token`` is False).
    ``engine_versions`` replaces what the mocked ``get_engine_versions`` answers
    (:data:`MOCK_ENGINE_VERSIONS`). With ``check`` the program's error is raised; otherwise it is
    returned in :attr:`StackRun.error`.
    """
    project, config = load_stack_config(stack)
    platform_key = f"{project}:{PLATFORM_KEY}"
    if config_overrides:
        config[platform_key] = _deep_merge(config.get(platform_key, {}), config_overrides)
    secret_keys: list[str] = []
    secrets = dict(secrets or {})
    if placeholder_keys and API_KEYS_KEY not in secrets and f"{project}:{API_KEYS_KEY}" not in secrets:
        secrets[API_KEYS_KEY] = placeholder_api_keys()
    token_set = HF_TOKEN_KEY in secrets or f"{project}:{HF_TOKEN_KEY}" in secrets
    if placeholder_token and not token_set and _has_gated_model(config.get(platform_key)):
        secrets[HF_TOKEN_KEY] = placeholder_hf_token()
    for key, value in (plain or {}).items():
        config[key if ":" in key else f"{project}:{key}"] = value
    for key, value in secrets.items():
        qualified = key if ":" in key else f"{project}:{key}"
        config[qualified] = value
        secret_keys.append(qualified)
    wire_config = {key: _config_value(value) for key, value in config.items()}

    context = contextvars.Context()
    monitor, outputs, secret_outputs, error = context.run(
        _run, stack, wire_config, secret_keys, project, engine_versions
    )
    if error is not None and check:
        raise error
    return StackRun(
        stack=stack,
        resources=list(monitor.recorded),
        outputs=outputs,
        secret_outputs=secret_outputs,
        error=error,
        calls=list(getattr(monitor.mocks, "calls", [])),
    )


def _has_gated_model(platform: Any) -> bool:
    """Whether the stack's config (valid or not) names a model that needs ``hfToken``."""
    from components.config import ConfigError, parse_platform_config

    try:
        return bool(parse_platform_config(platform).gated_models)
    except ConfigError:
        return False


def run_stack(
    stack: str,
    config_overrides: Mapping[str, Any] | None = None,
    *,
    secrets: Mapping[str, str] | None = None,
) -> list[RegisteredResource]:
    """Every resource the program registers for ``stack`` (raises what the program raises)."""
    return render_stack(stack, config_overrides, secrets=secrets).resources


_KIND_ORDER = (
    "Namespace",
    "CustomResourceDefinition",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Secret",
    "ConfigMap",
    "Service",
    "Deployment",
)


def _masked(value: Any, path: str, secret_paths: set[str]) -> Any:
    if path in secret_paths:
        return "[secret]"
    if isinstance(value, dict):
        return {
            key: _masked(item, f"{path}.{key}" if path else key, secret_paths) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_masked(item, f"{path}[{index}]", secret_paths) for index, item in enumerate(value)]
    return value


def _sorted(value: Any) -> Any:
    """A deep copy with mapping keys sorted (the wire format does not keep the program's order)."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def kubernetes_objects(
    resources: list[RegisteredResource], *, mask_secrets: bool = False
) -> list[dict[str, Any]]:
    """The manifests (apiVersion, kind, metadata, ...) of every Kubernetes object, in apply order.

    With ``mask_secrets`` every input that was a Pulumi secret reads ``[secret]``.
    """
    objects: list[dict[str, Any]] = []
    for resource in resources:
        if not resource.custom or not resource.type.startswith("kubernetes:"):
            continue
        props = _masked(resource.props, "", set(resource.secret_paths)) if mask_secrets else resource.props
        if "apiVersion" not in props or "kind" not in props:
            continue
        first = [key for key in ("apiVersion", "kind", "metadata", "spec") if key in props]
        manifest = {key: _sorted(props[key]) for key in first}
        manifest.update({key: _sorted(props[key]) for key in sorted(props) if key not in manifest})
        objects.append(manifest)

    def order(manifest: dict[str, Any]) -> tuple[int, str, str, str]:
        kind = str(manifest["kind"])
        rank = _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)
        metadata = manifest.get("metadata") or {}
        return rank, kind, str(metadata.get("namespace", "")), str(metadata.get("name", ""))

    return sorted(objects, key=order)
