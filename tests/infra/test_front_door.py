"""Closed by default: API keys at the front door in both modes, HTTPS, a private gateway, a fence."""

from __future__ import annotations

import json

import pytest
import yaml
from epp.contract import API_KEYS_MOUNT_DIR, API_KEYS_SECRET_KEY

from components.config import ConfigError
from render import StackRun, kubernetes_objects, render_stack
from tests.infra.conftest import DEPLOYMENT, GATEWAY, HTTP_ROUTE, named, of_type, pod_spec

SECRET = "kubernetes:core/v1:Secret"
BACKEND_POLICY = "kubernetes:networking.gke.io/v1:GCPBackendPolicy"
SECURITY_POLICY = "gcp:compute/regionSecurityPolicy:RegionSecurityPolicy"
DNS_AUTHORIZATION = "gcp:certificatemanager/dnsAuthorization:DnsAuthorization"
CERTIFICATE = "gcp:certificatemanager/certificate:Certificate"
ADDRESS = "gcp:compute/address:Address"

TEAM_A_KEY = "sk-team-a-" + "q7Zr2xLm9PwK4vN8tB3cH6dJ1fG5sA0y"
KEYS = yaml.safe_dump(
    [
        {"name": "team-a", "key": TEAM_A_KEY, "models": ["google/gemma-2b-it"], "requestsPerMinute": 120},
        {"name": "team-b", "sha256": "ab" * 32},
    ]
)
PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIBunittestcertificate\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEunittestprivatekeydonotleak\n-----END PRIVATE KEY-----\n"


@pytest.fixture(scope="module")
def keyed() -> StackRun:
    return render_stack("gpu", {"bbr": {"replicas": 3}}, secrets={"apiKeys": KEYS})


def _front_door(run: StackRun) -> dict[str, object]:
    [container] = pod_spec(named(run, DEPLOYMENT, "body-based-router"))["containers"]
    assert isinstance(container, dict)
    return container


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def test_the_key_list_only_ever_travels_as_a_pulumi_secret(keyed: StackRun) -> None:
    [secret] = [r for r in of_type(keyed, SECRET) if r.props["metadata"]["name"] == "api-keys"]

    assert secret.props["stringData"][API_KEYS_SECRET_KEY] == KEYS
    assert any(f"stringData.{API_KEYS_SECRET_KEY}".startswith(path) for path in secret.secret_paths)
    assert [r.name for r in keyed.resources if TEAM_A_KEY in repr(r.props)] == [secret.name]
    assert TEAM_A_KEY not in json.dumps(keyed.outputs, default=str)
    rendered = yaml.safe_dump_all(kubernetes_objects(keyed.resources, mask_secrets=True))
    assert TEAM_A_KEY not in rendered


def test_the_front_door_mounts_the_keys_read_only_and_each_replica_allows_its_share(keyed: StackRun) -> None:
    container = _front_door(keyed)
    pod = pod_spec(named(keyed, DEPLOYMENT, "body-based-router"))
    args = container["args"]
    assert isinstance(args, list)

    assert _flag(args, "--api-keys-file") == f"{API_KEYS_MOUNT_DIR}/{API_KEYS_SECRET_KEY}"
    assert _flag(args, "--limit-share") == "3"
    assert named(keyed, DEPLOYMENT, "body-based-router").props["spec"]["replicas"] == 3
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == API_KEYS_MOUNT_DIR]  # type: ignore[attr-defined]
    assert mount["readOnly"] is True
    assert "subPath" not in mount, "a subPath mount never sees the Secret change: keys could not be revoked"
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "api-keys"


def test_unified_pool_mode_checks_keys_at_the_same_front_door() -> None:
    run = render_stack("gpu", {"routingMode": "unified-pool"}, secrets={"apiKeys": KEYS})

    args = _front_door(run)["args"]
    assert isinstance(args, list)
    assert _flag(args, "--api-keys-file") == f"{API_KEYS_MOUNT_DIR}/{API_KEYS_SECRET_KEY}"
    assert _flag(args, "--limit-share") == "2"
    assert [r for r in run.resources if "GCPRoutingExtension" in r.type]


def test_without_keys_the_stack_stops_and_says_how_to_set_them() -> None:
    run = render_stack("gpu", check=False, placeholder_keys=False)

    assert isinstance(run.error, ConfigError)
    [message] = run.error.errors
    assert message.startswith("apiKeys: ")
    assert "pulumi config set --secret apiKeys" in message
    assert run.resources == []


def test_a_key_list_in_plain_text_is_refused() -> None:
    run = render_stack("gpu", plain={"apiKeys": KEYS}, check=False, placeholder_keys=False)

    assert isinstance(run.error, ConfigError)
    [message] = run.error.errors
    assert "plain text" in message
    assert "--secret" in message
    assert TEAM_A_KEY not in str(run.error)
    assert run.resources == []


def test_a_bad_entry_names_itself_and_never_quotes_a_key() -> None:
    bad = yaml.safe_load(KEYS)
    bad[1]["models"] = ["microsoft/Phi-3-mini-4k-instruct", "meta/llama-70b"]
    bad.append({"name": "team-c", "key": "short-" + TEAM_A_KEY[:10]})

    run = render_stack("gpu", secrets={"apiKeys": yaml.safe_dump(bad)}, check=False)

    assert isinstance(run.error, ConfigError)
    assert run.error.errors[0].startswith("apiKeys[2].key: ")
    assert any(e.startswith("apiKeys[1].models[1]: 'meta/llama-70b' is not served") for e in run.error.errors)
    assert TEAM_A_KEY[:10] not in str(run.error)
    assert run.resources == []


def test_opting_out_leaves_no_key_secret_and_no_key_check() -> None:
    run = render_stack("gpu", {"gateway": {"auth": {"mode": "none"}}}, placeholder_keys=False)

    args = _front_door(run)["args"]
    assert isinstance(args, list)
    assert "--api-keys-file" not in args
    assert not [r for r in of_type(run, SECRET) if r.props["metadata"]["name"] == "api-keys"]
    assert "Authorization" not in next(iter(run.outputs["servedModels"].values()))


def test_keys_set_while_auth_is_off_are_refused_rather_than_ignored() -> None:
    run = render_stack("gpu", {"gateway": {"auth": {"mode": "none"}}}, secrets={"apiKeys": KEYS}, check=False)

    assert isinstance(run.error, ConfigError)
    assert run.error.errors[0].startswith("apiKeys: keys are set but platform.gateway.auth.mode is none")


# --- HTTPS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def managed_tls() -> StackRun:
    return render_stack("gpu", {"gateway": {"tls": {"domain": "llm.example.com"}}})


def _listeners(run: StackRun) -> dict[str, dict[str, object]]:
    [gateway] = of_type(run, GATEWAY)
    return {listener["name"]: listener for listener in gateway.props["spec"]["listeners"]}


def test_a_domain_gets_a_regional_google_managed_certificate_authorized_by_dns(managed_tls: StackRun) -> None:
    [authorization] = of_type(managed_tls, DNS_AUTHORIZATION)
    [certificate] = of_type(managed_tls, CERTIFICATE)

    assert authorization.props["location"] == certificate.props["location"] == "us-central1"
    assert authorization.props["domain"] == "llm.example.com"
    assert certificate.props["managed"]["domains"] == ["llm.example.com"]
    assert certificate.props["managed"]["dnsAuthorizations"] == [f"{authorization.name}-id"]
    https = _listeners(managed_tls)["https"]
    assert https["port"] == 443
    assert https["protocol"] == "HTTPS"
    assert https["tls"] == {
        "mode": "Terminate",
        "options": {"networking.gke.io/cert-manager-certs": certificate.props["name"]},
    }
    records = managed_tls.outputs["dnsRecords"]
    assert records[0].startswith("_acme-challenge.llm.example.com. CNAME ")
    assert records[-1] == "llm.example.com. A 203.0.113.20"
    assert managed_tls.outputs["gatewayUrl"] == "https://llm.example.com"
    curls = managed_tls.outputs["servedModels"].values()
    assert all(c.startswith("curl -sS https://llm.example.com/") for c in curls)


def test_plain_http_only_redirects_to_https(managed_tls: StackRun) -> None:
    routes = {r.props["metadata"]["name"]: r.props["spec"] for r in of_type(managed_tls, HTTP_ROUTE)}
    redirect = routes.pop("http-to-https")

    assert _listeners(managed_tls)["http"]["port"] == 80
    assert [ref["sectionName"] for ref in redirect["parentRefs"]] == ["http"]
    [rule] = redirect["rules"]
    redirect_to_https = {"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}
    assert rule["filters"] == [redirect_to_https]
    assert "backendRefs" not in rule
    for spec in routes.values():
        assert [ref["sectionName"] for ref in spec["parentRefs"]] == ["https"]


def test_http_can_be_not_served_at_all() -> None:
    run = render_stack("gpu", {"gateway": {"tls": {"domain": "llm.example.com", "redirectHttp": False}}})

    assert list(_listeners(run)) == ["https"]
    assert "http-to-https" not in {r.props["metadata"]["name"] for r in of_type(run, HTTP_ROUTE)}


def test_a_self_managed_certificate_comes_from_secrets_for_trials() -> None:
    run = render_stack(
        "tpu",
        {"gateway": {"tls": {"certificate": "self-managed"}}},
        secrets={"tlsCertificate": PEM_CERT, "tlsPrivateKey": PEM_KEY},
    )
    [secret] = [r for r in of_type(run, SECRET) if r.props["type"] == "kubernetes.io/tls"]

    assert set(secret.props["stringData"]) == {"tls.crt", "tls.key"}
    assert {"stringData.tls.key", "stringData.tls.crt"} <= set(secret.secret_paths) or any(
        p == "stringData" for p in secret.secret_paths
    )
    assert [r.name for r in run.resources if "unittestprivatekey" in repr(r.props)] == [secret.name]
    assert _listeners(run)["https"]["tls"] == {
        "mode": "Terminate",
        "certificateRefs": [{"group": "", "kind": "Secret", "name": secret.props["metadata"]["name"]}],
    }
    assert not of_type(run, CERTIFICATE)


def test_a_self_managed_certificate_without_its_key_is_refused() -> None:
    run = render_stack("tpu", {"gateway": {"tls": {"certificate": "self-managed"}}}, check=False)

    assert isinstance(run.error, ConfigError)
    assert [e.split(":")[0] for e in run.error.errors] == ["tlsCertificate", "tlsPrivateKey"]


# --- private or fenced ------------------------------------------------------------------------------


def test_an_internal_gateway_uses_the_internal_class_on_a_vpc_address() -> None:
    run = render_stack("gpu", {"gateway": {"visibility": "internal"}})
    [gateway] = of_type(run, GATEWAY)
    [address] = of_type(run, ADDRESS)

    assert gateway.props["spec"]["gatewayClassName"] == "gke-l7-rilb"
    assert address.props["addressType"] == "INTERNAL"
    assert address.props["purpose"] == "SHARED_LOADBALANCER_VIP"
    assert "subnetwork" in address.props
    assert "networkTier" not in address.props


def test_allowed_source_ranges_fence_every_backend_with_cloud_armor() -> None:
    ranges = [f"198.51.{i}.0/24" for i in range(12)] + ["2001:db8::/32"]
    run = render_stack("gpu", {"gateway": {"allowedSourceRanges": ranges}})
    [policy] = of_type(run, SECURITY_POLICY)
    rules = sorted(policy.props["rules"], key=lambda rule: rule["priority"])

    assert policy.props["region"] == "us-central1"
    assert policy.props["type"] == "CLOUD_ARMOR"
    allows = [rule["match"]["config"]["srcIpRanges"] for rule in rules if rule["action"] == "allow"]
    allowed = [source for sources in allows for source in sources]
    assert allowed == ranges
    assert all(len(rule["match"]["config"]["srcIpRanges"]) <= 10 for rule in rules)
    assert rules[-1]["action"] == "deny(403)"
    assert rules[-1]["match"]["config"]["srcIpRanges"] == ["*"]
    backend_policies = of_type(run, BACKEND_POLICY)
    assert len(backend_policies) == 2
    for backend in backend_policies:
        assert backend.props["spec"]["default"]["securityPolicy"] == policy.props["name"]


def test_without_ranges_there_is_no_security_policy(gpu: StackRun) -> None:
    assert not of_type(gpu, SECURITY_POLICY)
    assert all("securityPolicy" not in p.props["spec"]["default"] for p in of_type(gpu, BACKEND_POLICY))
