"""The policy rules over what the real program registers for each committed stack (a mocked Pulumi run).

The committed stacks must pass every rule; a copy of a stack with one reviewer-visible regression
(a root container, a dropped health check, a tag instead of a digest, ...) must not. The served pack
and the in-process rules must agree on the real resources, so the pack in CI judges what these tests do.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from pulumi.runtime.proto import analyzer_pb2_grpc

from policy import rules
from render import RegisteredResource, run_stack
from tests.policy.pack_server import analyze, analyze_stack

STACKS = ("gpu", "tpu")
RULE_NAMES = [rule.name for rule in rules.RESOURCE_RULES] + [rule.name for rule in rules.STACK_RULES]
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
CLUSTER = "gcp:container/cluster:Cluster"
POOL = "kubernetes:inference.networking.k8s.io/v1:InferencePool"
DESCRIPTIONS = {rule.name: rule.description for rule in rules.RESOURCE_RULES} | {
    rule.name: rule.description for rule in rules.STACK_RULES
}


@pytest.fixture(scope="module")
def registered() -> dict[str, list[RegisteredResource]]:
    return {stack: run_stack(stack) for stack in STACKS}


def _subjects(resources: list[RegisteredResource]) -> list[rules.StackResource]:
    return [rules.StackResource(type=r.type, name=r.name, urn=r.urn, props=r.props) for r in resources]


def _violations_of(
    rule_name: str, resources: list[rules.StackResource], stack: str
) -> list[rules.StackViolation]:
    for resource_rule in rules.RESOURCE_RULES:
        if resource_rule.name == rule_name:
            return [
                rules.StackViolation(r.urn, message)
                for r in resources
                for message in resource_rule.check(r.type, r.props, stack)
            ]
    [stack_rule] = [rule for rule in rules.STACK_RULES if rule.name == rule_name]
    return stack_rule.check(resources)


def _mutated(
    resources: list[RegisteredResource], *, where: Callable[[RegisteredResource], bool]
) -> tuple[list[rules.StackResource], rules.StackResource]:
    """A deep copy of the stack, and the (mutable) copy of the first resource matching `where`."""
    copies = [
        rules.StackResource(type=r.type, name=r.name, urn=r.urn, props=copy.deepcopy(r.props))
        for r in resources
    ]
    target = next(c for c, r in zip(copies, resources, strict=True) if where(r))
    return copies, target


def _introduced(
    resources: list[rules.StackResource], original: list[RegisteredResource], stack: str
) -> list[rules.StackViolation]:
    """The violations the mutated stack has that the committed one does not."""
    before = set(rules.check_stack(_subjects(original), stack))
    return [v for v in rules.check_stack(resources, stack) if v not in before]


def _model_server(resource: RegisteredResource) -> bool:
    return resource.type == DEPLOYMENT and resource.props["metadata"]["name"].startswith("vllm-")


def _kept_off_root(resource: RegisteredResource) -> bool:
    """A workload the non-root rule holds without exception: a GPU model server, or else an EPP (a
    TPU model server may run as uid 0, unprivileged: docs/tpu-pod-security.md)."""
    if _epp(resource):
        return True
    return _model_server(resource) and "google.com/tpu" not in str(resource.props)


def _epp(resource: RegisteredResource) -> bool:
    return resource.type == DEPLOYMENT and resource.props["metadata"]["name"].endswith("-epp")


def _pod(resource: rules.StackResource) -> dict[str, Any]:
    spec = resource.props["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


@pytest.mark.parametrize("stack", STACKS)
def test_each_stack_gives_every_rule_something_to_judge(
    registered: dict[str, list[RegisteredResource]], stack: str
) -> None:
    types = [r.type for r in registered[stack]]

    assert types.count(DEPLOYMENT) >= 4  # a model server per model, an EPP per pool, BBR
    assert types.count(CLUSTER) == 1
    assert types.count(POOL) == 2
    assert types.count(rules.HEALTH_CHECK_POLICY_TYPE) >= 2


@pytest.mark.parametrize("rule_name", RULE_NAMES)
@pytest.mark.parametrize("stack", STACKS)
def test_the_committed_stack_passes_the_rule(
    registered: dict[str, list[RegisteredResource]], stack: str, rule_name: str
) -> None:
    violations = _violations_of(rule_name, _subjects(registered[stack]), stack)

    assert [v.message for v in violations] == []


@pytest.mark.parametrize("stack", STACKS)
def test_a_model_server_stripped_of_its_non_root_settings_is_rejected(
    registered: dict[str, list[RegisteredResource]], stack: str
) -> None:
    resources, server = _mutated(registered[stack], where=_kept_off_root)
    pod = _pod(server)
    for context in [
        pod.get("securityContext", {}),
        *(c.get("securityContext", {}) for c in pod["containers"]),
    ]:
        context.pop("runAsNonRoot", None)
        context.pop("runAsUser", None)

    violations = _introduced(resources, registered[stack], stack)

    assert [v.urn for v in violations] == [server.urn]
    assert "may run as root" in violations[0].message


@pytest.mark.parametrize("stack", STACKS)
def test_a_model_server_switched_to_uid_0_is_rejected(
    registered: dict[str, list[RegisteredResource]], stack: str
) -> None:
    resources, server = _mutated(registered[stack], where=_kept_off_root)
    _pod(server)["containers"][0]["securityContext"]["runAsUser"] = 0

    violations = _introduced(resources, registered[stack], stack)

    assert [v.urn for v in violations] == [server.urn]
    assert "runs as root (runAsUser: 0)" in violations[0].message


@pytest.mark.parametrize("stack", STACKS)
def test_dropping_a_pools_health_check_policy_is_rejected(
    registered: dict[str, list[RegisteredResource]], stack: str
) -> None:
    resources = _subjects(registered[stack])
    [dropped, *_] = [
        r
        for r in resources
        if r.type == rules.HEALTH_CHECK_POLICY_TYPE
        and r.props["spec"]["targetRef"]["kind"] == "InferencePool"
    ]
    pool_name = dropped.props["spec"]["targetRef"]["name"]
    [pool] = [r for r in resources if r.type == POOL and r.props["metadata"]["name"] == pool_name]

    violations = _introduced([r for r in resources if r is not dropped], registered[stack], stack)

    assert [v.urn for v in violations] == [pool.urn]


@pytest.mark.parametrize("stack", STACKS)
def test_an_endpoint_picker_without_resource_requests_is_rejected(
    registered: dict[str, list[RegisteredResource]], stack: str
) -> None:
    resources, epp = _mutated(registered[stack], where=_epp)
    del _pod(epp)["containers"][0]["resources"]["requests"]

    violations = _introduced(resources, registered[stack], stack)

    assert [v.urn for v in violations] == [epp.urn]
    assert "has no resources.requests for cpu and memory" in violations[0].message


@pytest.mark.parametrize("stack", STACKS)
def test_an_endpoint_picker_image_by_tag_is_rejected(
    registered: dict[str, list[RegisteredResource]], stack: str
) -> None:
    resources, epp = _mutated(registered[stack], where=_epp)
    container = _pod(epp)["containers"][0]
    container["image"] = container["image"].split("@")[0]

    violations = _introduced(resources, registered[stack], stack)

    assert [v.urn for v in violations] == [epp.urn]
    assert "is not pinned by digest" in violations[0].message


@pytest.mark.parametrize("stack", STACKS)
def test_the_stack_deployed_as_production_would_have_to_protect_its_cluster(
    registered: dict[str, list[RegisteredResource]], stack: str
) -> None:
    resources, cluster = _mutated(registered[stack], where=lambda r: r.type == CLUSTER)
    production = f"{stack}-prod"
    assert cluster.props.get("deletionProtection") is False  # the committed dev stacks may be torn down

    as_dev = set(rules.check_stack(resources, stack))
    unprotected = [v for v in rules.check_stack(resources, production) if v not in as_dev]
    cluster.props["deletionProtection"] = True  # type: ignore[index]
    protected = set(rules.check_stack(resources, production))

    assert [v.urn for v in unprotected] == [cluster.urn]
    assert "must set deletionProtection: true" in unprotected[0].message
    assert protected == as_dev


@pytest.mark.parametrize("stack", STACKS)
def test_the_served_pack_and_the_rules_agree_on_the_real_stack(
    analyzer: analyzer_pb2_grpc.AnalyzerStub, registered: dict[str, list[RegisteredResource]], stack: str
) -> None:
    resources, server = _mutated(registered[stack], where=_kept_off_root)
    _pod(server)["containers"][0]["securityContext"]["runAsUser"] = 0  # so agreement is not vacuous
    production = f"{stack}-prod"
    as_sent = [
        (r.type, r.name, r.urn.replace(f"urn:pulumi:{stack}::", f"urn:pulumi:{production}::"), r.props)
        for r in resources
    ]

    diagnostics = [
        (diagnostic, urn)
        for t, name, urn, props in as_sent
        for diagnostic in analyze(analyzer, t, name, urn, props)
    ] + [(diagnostic, diagnostic.urn) for diagnostic in analyze_stack(analyzer, as_sent)]
    # The pack reports a resource violation without a URN and leads each message with the policy description.
    served = [
        (d.urn or urn, d.message.removeprefix(DESCRIPTIONS[d.policyName] + "\n")) for d, urn in diagnostics
    ]
    in_process = [
        (v.urn.replace(f"urn:pulumi:{stack}::", f"urn:pulumi:{production}::"), v.message)
        for v in rules.check_stack(resources, production)
    ]

    cluster = next(r for r in resources if r.type == CLUSTER)
    assert sorted(served) == sorted(in_process)
    assert {server.urn, cluster.urn} <= {
        urn.replace(f"urn:pulumi:{production}::", f"urn:pulumi:{stack}::") for urn, _ in in_process
    }


# --- a public gateway must check API keys -------------------------------------------------------------


def _front_door_violations(run_resources: list[RegisteredResource], stack: str) -> list[rules.StackViolation]:
    return rules.public_gateways_check_api_keys(_subjects(run_resources))


def test_the_committed_stacks_check_keys_on_their_public_gateway(
    registered: dict[str, list[RegisteredResource]],
) -> None:
    for stack, resources in registered.items():
        assert _front_door_violations(resources, stack) == []


def test_a_public_gateway_without_keys_is_rejected_and_an_internal_one_is_not() -> None:
    from render import render_stack

    public = render_stack("gpu", {"gateway": {"auth": {"mode": "none"}}}, placeholder_keys=False)
    internal = render_stack(
        "gpu", {"gateway": {"auth": {"mode": "none"}, "visibility": "internal"}}, placeholder_keys=False
    )

    [violation] = _front_door_violations(public.resources, "gpu")
    assert "llm-gateway/llm-gateway (gke-l7-regional-external-managed) is reachable from the internet" in (
        violation.message
    )
    assert violation.urn.endswith("::llm-gateway")
    assert _front_door_violations(internal.resources, "gpu") == []


def test_a_key_checking_deployment_not_behind_the_gateway_does_not_count(
    registered: dict[str, list[RegisteredResource]],
) -> None:
    resources, extension = _mutated(
        registered["gpu"], where=lambda r: r.type == "kubernetes:networking.gke.io/v1:GCPRoutingExtension"
    )
    extension.props["spec"]["targetRefs"][0]["name"] = "another-gateway"

    [violation] = rules.public_gateways_check_api_keys(resources)
    assert "no front door on it checks API keys" in violation.message
