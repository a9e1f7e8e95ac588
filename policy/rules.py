"""The review rules of the policy pack, as pure functions over Pulumi resource inputs.

Nothing here imports `pulumi_policy`: the rules run unchanged in the main virtualenv (unit tests,
checks over the mocked program) and inside the policy pack (`policy/__main__.py`), which only wires
them to the Pulumi policy SDK. The one import of the project is `epp.contract` (standard library
only; the pack's venv holds the EPP package without its dependencies), for how the BBR's command
spells a flag.

A resource is seen as Pulumi shows it to a policy: its type token (``kubernetes:apps/v1:Deployment``,
``gcp:container/cluster:Cluster``) and its inputs with camelCase names (``spec.template.spec.containers``,
``securityContext.runAsNonRoot``). Inside the pack the inputs are read-only ``Mapping``/``Sequence``
proxies rather than dicts and lists, so every rule reads them through those abstract types only.

Each resource rule returns the violations it found as human-readable messages; an empty list means
the resource passes. Stack rules see every resource at once and return (urn, message) pairs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from epp.contract import command_flag

# Pod-owning Kubernetes kinds and where their pod spec lives in the inputs.
_POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "PodTemplate": ("template", "spec"),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
# Any other Kubernetes kind that carries a Deployment-like pod template (Argo Rollouts and the like).
_TEMPLATE_SPEC_PATH: tuple[str, ...] = ("spec", "template", "spec")
_CONTAINER_LISTS = ("initContainers", "containers")

_DIGEST_PINNED = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")

INFERENCE_POOL_KIND = "InferencePool"
HEALTH_CHECK_POLICY_TYPE = "kubernetes:networking.gke.io/v1:HealthCheckPolicy"
CLUSTER_TYPE = "gcp:container/cluster:Cluster"
GATEWAY_TYPE = "kubernetes:gateway.networking.k8s.io/v1:Gateway"
ROUTING_EXTENSION_TYPE = "kubernetes:networking.gke.io/v1:GCPRoutingExtension"
SERVICE_TYPE = "kubernetes:core/v1:Service"
DEPLOYMENT_TYPE = "kubernetes:apps/v1:Deployment"
# The BBR's flag that loads the key list, as the ``bbr`` command spells it (``epp.settings``).
API_KEYS_FLAG = command_flag("api_keys_file")
# GKE gateway classes whose load balancer has an internet-facing address.
PUBLIC_GATEWAY_CLASSES = frozenset(
    {
        "gke-l7-regional-external-managed",
        "gke-l7-regional-external-managed-mc",
        "gke-l7-global-external-managed",
        "gke-l7-global-external-managed-mc",
        "gke-l7-gxlb",
        "gke-l7-gxlb-mc",
    }
)


@dataclass(frozen=True)
class TypeToken:
    """A Pulumi type token ``package:module:Name``; Kubernetes: ``kubernetes:group/version:Kind``."""

    package: str
    module: str
    name: str

    @classmethod
    def parse(cls, token: str) -> TypeToken:
        parts = token.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"resource type {token!r} is not a Pulumi type token (package:module:Name)")
        return cls(*parts)

    @property
    def is_kubernetes(self) -> bool:
        return self.package == "kubernetes"

    @property
    def api_group(self) -> str:
        """The Kubernetes API group (``apps``, ``inference.networking.k8s.io``; ``core`` for core)."""
        return self.module.rsplit("/", 1)[0]


@dataclass(frozen=True)
class StackResource:
    """One resource of a stack as a stack rule sees it."""

    type: str
    name: str
    urn: str
    props: Mapping[str, Any]


@dataclass(frozen=True)
class StackViolation:
    urn: str
    message: str


ResourceCheck = Callable[[str, Mapping[str, Any], str], list[str]]
StackCheck = Callable[[Sequence[StackResource]], list[StackViolation]]


@dataclass(frozen=True)
class ResourceRule:
    """A rule applied to each resource on its own: ``check(resource_type, props, stack)``."""

    name: str
    description: str
    check: ResourceCheck


@dataclass(frozen=True)
class StackRule:
    """A rule applied to all the resources of a stack at once."""

    name: str
    description: str
    check: StackCheck


# --- reading inputs ---------------------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: Any) -> Sequence[Any]:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return value
    return ()


def _number(value: Any) -> float | None:
    """A numeric input; Pulumi hands numbers to policies as floats (``1000.0``), mocks as ints."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _dig(props: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = props
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def pod_spec(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec a Kubernetes resource would run, or None when it runs no pods.

    Patch and List variants are skipped: a patch legitimately carries a partial spec, and a list's
    items are registered as resources of their own.
    """
    token = TypeToken.parse(resource_type)
    if not token.is_kubernetes or token.name.endswith(("Patch", "List")):
        return None
    path = _POD_SPEC_PATHS.get(token.name)
    if path is None:
        spec = _dig(props, _TEMPLATE_SPEC_PATH)
        if isinstance(spec, Mapping) and any(key in spec for key in _CONTAINER_LISTS):
            return spec
        return None
    spec = _dig(props, path)
    return spec if isinstance(spec, Mapping) else {}


def _containers(spec: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, container) for every init and app container of a pod spec."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    for list_name in _CONTAINER_LISTS:
        for index, item in enumerate(_sequence(spec.get(list_name))):
            container = _mapping(item)
            name = container.get("name")
            label = f"{list_name}[{index}]" + (f" ({name!r})" if isinstance(name, str) and name else "")
            found.append((label, container))
    return found


def _subject(resource_type: str, props: Mapping[str, Any]) -> str:
    kind = TypeToken.parse(resource_type).name
    name = _dig(props, ("metadata", "name"))
    return f"{kind} {name!r}" if isinstance(name, str) and name else kind


# --- resource rules ---------------------------------------------------------------------------------


def containers_run_as_non_root(resource_type: str, props: Mapping[str, Any], stack: str = "") -> list[str]:
    """Every container must be kept off uid 0.

    A container passes when its effective ``runAsNonRoot`` is true or its effective ``runAsUser`` is a
    non-zero uid, where the container's ``securityContext`` overrides the pod's. An explicit
    ``runAsUser: 0`` or ``runAsNonRoot: false`` is a violation, with one exception: a container that
    requests TPU chips (``google.com/tpu``) may run as uid 0 if it is otherwise unprivileged -- not
    privileged, no privilege escalation, every capability dropped and none added (its ``/dev/vfio``
    nodes are root-owned; see docs/tpu-pod-security.md).
    """
    spec = pod_spec(resource_type, props)
    if spec is None:
        return []
    pod_context = _mapping(spec.get("securityContext"))
    subject = _subject(resource_type, props)
    violations: list[str] = []
    for label, container in _containers(spec):
        context = _mapping(container.get("securityContext"))
        if _unprivileged_tpu_container(container, context):
            continue
        non_root = context["runAsNonRoot"] if "runAsNonRoot" in context else pod_context.get("runAsNonRoot")
        user = context["runAsUser"] if "runAsUser" in context else pod_context.get("runAsUser")
        uid = _number(user)
        if uid == 0:
            violations.append(f"{subject}: container {label} runs as root (runAsUser: 0)")
        elif non_root is False:
            violations.append(f"{subject}: container {label} allows root (runAsNonRoot: false)")
        elif non_root is not True and not (uid is not None and uid > 0):
            violations.append(
                f"{subject}: container {label} may run as root: set securityContext.runAsNonRoot: true "
                "(or a non-zero runAsUser) on the pod or the container"
            )
    return violations


def _unprivileged_tpu_container(container: Mapping[str, Any], context: Mapping[str, Any]) -> bool:
    """Requests ``google.com/tpu`` and holds nothing beyond the uid: the TPU exception of the rule above."""
    limits = _mapping(_mapping(container.get("resources")).get("limits"))
    if "google.com/tpu" not in limits:
        return False
    capabilities = _mapping(context.get("capabilities"))
    drop = capabilities.get("drop")
    return (
        context.get("privileged") is not True
        and context.get("allowPrivilegeEscalation") is False
        and isinstance(drop, Sequence)
        and "ALL" in drop
        and not capabilities.get("add")
    )


def containers_request_cpu_and_memory(
    resource_type: str, props: Mapping[str, Any], stack: str = ""
) -> list[str]:
    """Every container must request both cpu and memory, so the scheduler can place it honestly."""
    spec = pod_spec(resource_type, props)
    if spec is None:
        return []
    subject = _subject(resource_type, props)
    violations: list[str] = []
    for label, container in _containers(spec):
        requests = _mapping(_mapping(container.get("resources")).get("requests"))
        missing = [resource for resource in ("cpu", "memory") if requests.get(resource) in (None, "")]
        if missing:
            violations.append(
                f"{subject}: container {label} has no resources.requests for {' and '.join(missing)}"
            )
    return violations


def images_pinned_by_digest(resource_type: str, props: Mapping[str, Any], stack: str = "") -> list[str]:
    """Every container image must be pinned by digest (``name@sha256:<64 hex>``), never by a movable tag."""
    spec = pod_spec(resource_type, props)
    if spec is None:
        return []
    subject = _subject(resource_type, props)
    violations: list[str] = []
    for label, container in _containers(spec):
        image = container.get("image")
        if not isinstance(image, str) or not image:
            violations.append(f"{subject}: container {label} names no image to pin")
        elif not _DIGEST_PINNED.fullmatch(image):  # the resolved reference: tag@sha256:<digest>
            violations.append(
                f"{subject}: container {label} image {image!r} is not pinned by digest (use name@sha256:...)"
            )
    return violations


def is_production_stack(stack: str) -> bool:
    return "prod" in stack.lower()


def prod_clusters_have_deletion_protection(
    resource_type: str, props: Mapping[str, Any], stack: str = ""
) -> list[str]:
    """On a stack whose name contains ``prod``, a GKE cluster must set ``deletionProtection: true``.

    The provider's default is not trusted: production protection has to be visible in the program.
    """
    if resource_type != CLUSTER_TYPE or not is_production_stack(stack):
        return []
    if props.get("deletionProtection") is True:
        return []
    name = props.get("name")
    subject = f"GKE cluster {name!r}" if isinstance(name, str) and name else "GKE cluster"
    return [f"{subject} on production stack {stack!r} must set deletionProtection: true"]


# --- stack rules ------------------------------------------------------------------------------------


def _namespace(value: Any) -> str:
    return value if isinstance(value, str) and value else "default"


def every_inference_pool_has_a_health_check(resources: Sequence[StackResource]) -> list[StackViolation]:
    """Every InferencePool must be the targetRef of a HealthCheckPolicy in its namespace.

    Without one, GKE health-checks the pool's endpoints with its default probe, which vLLM does not
    answer, and marks every model server unhealthy. The targetRef must carry the pool's kind, its API
    group and its name.
    """
    targeted: set[tuple[str, str, str]] = set()
    for resource in resources:
        if resource.type != HEALTH_CHECK_POLICY_TYPE:
            continue
        target = _mapping(_dig(resource.props, ("spec", "targetRef")))
        if target.get("kind") != INFERENCE_POOL_KIND:
            continue
        namespace = target.get("namespace") or _dig(resource.props, ("metadata", "namespace"))
        targeted.add((str(target.get("group", "")), _namespace(namespace), str(target.get("name", ""))))

    violations: list[StackViolation] = []
    for resource in resources:
        token = TypeToken.parse(resource.type)
        if not token.is_kubernetes or token.name != INFERENCE_POOL_KIND:
            continue
        name = _dig(resource.props, ("metadata", "name"))
        pool_name = name if isinstance(name, str) and name else resource.name
        namespace = _namespace(_dig(resource.props, ("metadata", "namespace")))
        if (token.api_group, namespace, pool_name) not in targeted:
            violations.append(
                StackViolation(
                    urn=resource.urn,
                    message=(
                        f"InferencePool {namespace}/{pool_name} has no HealthCheckPolicy whose targetRef "
                        f"names it (group {token.api_group}, kind {INFERENCE_POOL_KIND}, name {pool_name})"
                    ),
                )
            )
    return violations


def _in_namespace(resource: StackResource, namespace: str) -> bool:
    return _namespace(_dig(resource.props, ("metadata", "namespace"))) == namespace


def _checks_api_keys(deployment: StackResource) -> bool:
    spec = pod_spec(deployment.type, deployment.props) or {}
    return any(
        API_KEYS_FLAG in [str(arg) for arg in _sequence(container.get("args"))]
        for _, container in _containers(spec)
    )


def _key_checking_front_doors(resources: Sequence[StackResource], namespace: str) -> set[str]:
    """Names of the Services in ``namespace`` whose pods (a Deployment they select) check API keys."""
    doors: set[str] = set()
    deployments = [r for r in resources if r.type == DEPLOYMENT_TYPE and _in_namespace(r, namespace)]
    for service in resources:
        if service.type != SERVICE_TYPE or not _in_namespace(service, namespace):
            continue
        selector = _mapping(_dig(service.props, ("spec", "selector")))
        if not selector:
            continue
        for deployment in deployments:
            labels = _mapping(_dig(deployment.props, ("spec", "template", "metadata", "labels")))
            if all(labels.get(k) == v for k, v in selector.items()) and _checks_api_keys(deployment):
                doors.add(str(_dig(service.props, ("metadata", "name"))))
    return doors


def public_gateways_check_api_keys(resources: Sequence[StackResource]) -> list[StackViolation]:
    """A Gateway with an internet-facing class must send every request through a front door that
    checks API keys: a GCPRoutingExtension on that Gateway whose backend Service runs pods started
    with ``--api-keys-file``. ``auth.mode: none`` is only for gateways reachable from a VPC."""
    violations: list[StackViolation] = []
    for gateway in resources:
        if gateway.type != GATEWAY_TYPE:
            continue
        gateway_class = _dig(gateway.props, ("spec", "gatewayClassName"))
        if gateway_class not in PUBLIC_GATEWAY_CLASSES:
            continue
        name = _dig(gateway.props, ("metadata", "name"))
        namespace = _namespace(_dig(gateway.props, ("metadata", "namespace")))
        doors = _key_checking_front_doors(resources, namespace)
        guarded = False
        for extension in resources:
            if extension.type != ROUTING_EXTENSION_TYPE or not _in_namespace(extension, namespace):
                continue
            targets = [_mapping(t) for t in _sequence(_dig(extension.props, ("spec", "targetRefs")))]
            if not any(t.get("kind") == "Gateway" and t.get("name") == name for t in targets):
                continue
            for chain in _sequence(_dig(extension.props, ("spec", "extensionChains"))):
                for item in _sequence(_mapping(chain).get("extensions")):
                    backend = _mapping(_mapping(item).get("backendRef"))
                    if backend.get("kind", "Service") == "Service" and backend.get("name") in doors:
                        guarded = True
        if not guarded:
            violations.append(
                StackViolation(
                    urn=gateway.urn,
                    message=(
                        f"Gateway {namespace}/{name} ({gateway_class}) is reachable from the internet but no "
                        "front door on it checks API keys: set platform.gateway.auth.mode: api-keys with the "
                        "secret apiKeys, or platform.gateway.visibility: internal"
                    ),
                )
            )
    return violations


# --- the rule set -----------------------------------------------------------------------------------

RESOURCE_RULES: tuple[ResourceRule, ...] = (
    ResourceRule(
        name="containers-run-as-non-root",
        description="Containers must not run as root: set runAsNonRoot: true or a non-zero runAsUser.",
        check=containers_run_as_non_root,
    ),
    ResourceRule(
        name="containers-request-cpu-and-memory",
        description="Containers must request cpu and memory.",
        check=containers_request_cpu_and_memory,
    ),
    ResourceRule(
        name="images-pinned-by-digest",
        description="Container images must be pinned by digest (@sha256:), not by tag.",
        check=images_pinned_by_digest,
    ),
    ResourceRule(
        name="prod-clusters-have-deletion-protection",
        description="GKE clusters on a stack named *prod* must enable deletion protection.",
        check=prod_clusters_have_deletion_protection,
    ),
)

STACK_RULES: tuple[StackRule, ...] = (
    StackRule(
        name="inference-pools-have-health-checks",
        description="Every InferencePool must have a HealthCheckPolicy whose targetRef names it.",
        check=every_inference_pool_has_a_health_check,
    ),
    StackRule(
        name="public-gateways-check-api-keys",
        description="A Gateway reachable from the internet must check API keys at its front door.",
        check=public_gateways_check_api_keys,
    ),
)


def check_resource(resource_type: str, props: Mapping[str, Any], stack: str) -> list[str]:
    """Every resource rule's violations for one resource."""
    return [message for rule in RESOURCE_RULES for message in rule.check(resource_type, props, stack)]


def check_stack(resources: Iterable[StackResource], stack: str) -> list[StackViolation]:
    """Every violation of every rule, resource and stack, over a whole stack."""
    resources = list(resources)
    violations = [
        StackViolation(resource.urn, message)
        for resource in resources
        for message in check_resource(resource.type, resource.props, stack)
    ]
    for rule in STACK_RULES:
        violations.extend(rule.check(resources))
    return violations


def stack_of_urn(urn: str) -> str:
    """The stack name in a Pulumi URN, ``urn:pulumi:<stack>::<project>::<type>::<name>``."""
    prefix = "urn:pulumi:"
    if not urn.startswith(prefix) or "::" not in urn:
        raise ValueError(f"{urn!r} is not a Pulumi URN (urn:pulumi:<stack>::<project>::<type>::<name>)")
    return urn[len(prefix) :].split("::", 1)[0]
