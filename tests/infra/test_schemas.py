"""Every object the program would apply is valid: custom resources against the CRD schemas in
``../shared/schemas``, core objects against the upstream Kubernetes OpenAPI (kubernetes-validate)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from render import StackRun, kubernetes_objects, load_stack_config, render_stack
from tests.infra.shared import SCHEMAS

KUBERNETES_VERSION = "1.34.0"
CORE_GROUPS = {"", "apps", "policy", "rbac.authorization.k8s.io", "apiextensions.k8s.io"}



def test_the_shared_crd_schemas_are_beside_the_project() -> None:
    """Without them every custom resource would go unchecked: that is a failure, never a skip."""
    assert SCHEMAS.is_dir(), f"the shared CRD schemas are not at {SCHEMAS} (../shared beside the repo)"


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _strict(schema: Any) -> Any:
    """The schema with unknown fields rejected wherever it lists the known ones.

    The API server silently prunes unknown fields of a structural CRD schema; a unit test should
    instead fail on them, since a pruned field is a typo that never takes effect.
    """
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


@cache
def _schema(group: str, kind: str, version: str) -> dict[str, Any]:
    path = SCHEMAS / group / f"{kind.lower()}_{version}.json"
    assert path.is_file(), f"no schema for {group}/{version} {kind} at {path}"
    schema: dict[str, Any] = _strict(json.loads(path.read_text(encoding="utf-8")))
    return schema


def _schema_errors(manifest: dict[str, Any]) -> list[str]:
    group, version = _group_version(manifest["apiVersion"])
    schema = _schema(group, manifest["kind"], version)
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    return sorted(
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator_class(schema).iter_errors(manifest)
    )


def _custom_resources(run: StackRun) -> list[dict[str, Any]]:
    return [
        o for o in kubernetes_objects(run.resources) if _group_version(o["apiVersion"])[0] not in CORE_GROUPS
    ]


def _core_objects(run: StackRun) -> list[dict[str, Any]]:
    return [o for o in kubernetes_objects(run.resources) if _group_version(o["apiVersion"])[0] in CORE_GROUPS]


def test_every_custom_resource_matches_its_crd_schema(stack_run: StackRun) -> None:
    custom = _custom_resources(stack_run)
    kinds = {o["kind"] for o in custom}

    assert kinds == {
        "InferencePool",
        "HealthCheckPolicy",
        "GCPBackendPolicy",
        "GCPRoutingExtension",
        "Gateway",
        "HTTPRoute",
        "PodMonitoring",
        "Rules",
    }
    for manifest in custom:
        assert _schema_errors(manifest) == [], f"{manifest['kind']} {manifest['metadata']['name']}"


def test_a_misspelt_field_in_a_custom_resource_would_fail_validation(gpu: StackRun) -> None:
    [pool, *_] = [o for o in _custom_resources(gpu) if o["kind"] == "InferencePool"]
    pool["spec"]["targetPort"] = pool["spec"].pop("targetPorts")

    assert any("targetPort" in error for error in _schema_errors(pool))


def test_every_inference_pool_names_its_picker_port_as_the_crd_rule_requires(stack_run: StackRun) -> None:
    pools = [o for o in _custom_resources(stack_run) if o["kind"] == "InferencePool"]

    assert pools
    for pool in pools:
        ref = pool["spec"]["endpointPickerRef"]
        assert ref.get("kind", "Service") != "Service" or "port" in ref


def test_every_core_object_is_valid_kubernetes(stack_run: StackRun) -> None:
    core = _core_objects(stack_run)

    assert {o["kind"] for o in core} >= {
        "Namespace",
        "Deployment",
        "Service",
        "ConfigMap",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    }
    for manifest in core:
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{manifest['kind']} {manifest['metadata']['name']}: {error.message} at {list(error.path)}"
            )


def test_the_crd_the_program_installs_on_request_is_valid_kubernetes(installed_crd: StackRun) -> None:
    [crd] = [o for o in _core_objects(installed_crd) if o["kind"] == "CustomResourceDefinition"]

    assert crd["spec"]["group"] == "inference.networking.k8s.io"
    assert [v["name"] for v in crd["spec"]["versions"]] == ["v1"]
    try:
        kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"CustomResourceDefinition: {error.message} at {list(error.path)}")


VARIANTS: dict[str, dict[str, Any]] = {
    "unified pool behind the front door": {"routingMode": "unified-pool"},
    "managed certificate, HTTP redirected": {"gateway": {"tls": {"domain": "llm.example.com"}}},
    "internal, fenced, without keys": {
        "gateway": {"visibility": "internal", "allowedSourceRanges": ["10.0.0.0/8"], "auth": {"mode": "none"}}
    },
    "three picker replicas": {"epp": {"replicas": 3}},
    "a model scaling to zero, with objectives": {
        "models": [
            load_stack_config("gpu")[1]["gke-llm-gateway:platform"]["models"][0],
            {
                key: value
                for key, value in load_stack_config("gpu")[1]["gke-llm-gateway:platform"]["models"][1].items()
                if key != "replicas"
            }
            | {
                "autoscaling": {"minReplicas": 0, "maxReplicas": 2},
                "objectives": [{"name": "chat", "priority": 5}],
            },
        ]
    },
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> StackRun:
    overrides = VARIANTS[request.param]
    keys = overrides.get("gateway", {}).get("auth", {}).get("mode", "api-keys") == "api-keys"
    return render_stack("gpu", overrides, placeholder_keys=keys)


def test_every_configured_variant_renders_schema_valid_objects(variant: StackRun) -> None:
    for manifest in _custom_resources(variant):
        assert _schema_errors(manifest) == [], f"{manifest['kind']} {manifest['metadata']['name']}"
    for manifest in _core_objects(variant):
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{manifest['kind']} {manifest['metadata']['name']}: {error.message} at {list(error.path)}"
            )


def test_a_self_managed_certificate_renders_a_valid_tls_secret() -> None:
    run = render_stack(
        "gpu",
        {"gateway": {"tls": {"certificate": "self-managed"}}},
        secrets={"tlsCertificate": "-----BEGIN CERTIFICATE-----\n", "tlsPrivateKey": "-----BEGIN KEY-----\n"},
    )
    for manifest in _custom_resources(run):
        assert _schema_errors(manifest) == [], f"{manifest['kind']} {manifest['metadata']['name']}"
    [secret] = [o for o in _core_objects(run) if o.get("type") == "kubernetes.io/tls"]
    kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
