"""Platform: composes every concern of one stack, from the VPC to the per-model routes.

Order of the explicit dependencies the engine must honour: proxy-only subnet -> Gateway;
image -> EPP and BBR Deployments; the InferencePool API (the GKE cluster that ships the CRD, or
the CRD this program installs, per ``inferencePoolCrd``) -> every InferencePool -> its
HealthCheckPolicy (and its HTTPRoute and GCPBackendPolicy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi

from components.armor import SourceRangePolicy, SourceRangePolicyArgs
from components.bbr import BodyBasedRouter, BodyBasedRouterArgs
from components.cluster import Cluster, ClusterArgs
from components.config import ModelSpec, PlatformConfig
from components.gateway import Gateway, GatewayArgs, Route
from components.health import PoolHealthCheck, PoolHealthCheckArgs
from components.inference_extension import InferencePool, InferencePoolArgs, InferencePoolCrd
from components.model_server import ModelServer, ModelServerArgs
from components.monitoring import Monitoring, MonitoringArgs
from components.namespace import Namespace, NamespaceArgs
from components.network import Network, NetworkArgs
from components.podspec import SERVING_LABEL
from components.registry import Registry, RegistryArgs
from components.secrets import StackSecrets
from components.tls import GatewayCertificate, GatewayCertificateArgs

UNIFIED_POOL = "all-models-pool"


@dataclass(frozen=True)
class PlatformArgs:
    config: PlatformConfig
    secrets: StackSecrets = field(default_factory=StackSecrets)


@dataclass(frozen=True)
class ServedModel:
    """What a client needs to call one model."""

    served_name: str
    pool: str


def pool_name(model: ModelSpec) -> str:
    return f"{model.name}-pool"


def curl_command(base_url: str, served_name: str, with_key: bool) -> str:
    """A ready-to-paste chat completion request for ``served_name`` through the Gateway."""
    body = json.dumps(
        {
            "model": served_name,
            "messages": [{"role": "user", "content": "Say hello in one sentence."}],
            "max_tokens": 64,
        }
    )
    key = ' -H "Authorization: Bearer $OPENAI_API_KEY"' if with_key else ""
    return (
        f"curl -sS {base_url}/v1/chat/completions{key} -H 'Content-Type: application/json' -d '{body}'"
    )


class Platform(pulumi.ComponentResource):
    """The whole multi-model serving platform of one stack."""

    network: Network
    cluster: Cluster
    registry: Registry
    gateway: Gateway
    served_models: list[ServedModel]
    gateway_address: pulumi.Output[str]
    gateway_url: pulumi.Output[str]
    dns_records: pulumi.Output[list[str]] | None
    curls: pulumi.Output[dict[str, str]]
    image_ref: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    dashboard_url: pulumi.Output[str] | None

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:Platform", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)

        self.network = Network(
            "network",
            NetworkArgs(project=cfg.project, region=cfg.region, name=cfg.cluster_name, ranges=cfg.network),
            opts=child,
        )
        self.cluster = Cluster("cluster", ClusterArgs(config=cfg, network=self.network), opts=child)
        provider = self.cluster.provider
        self.registry = Registry(
            "registry",
            RegistryArgs(project=cfg.project, region=cfg.region, repository=cfg.artifact_repository),
            opts=child,
        )
        namespace = Namespace(
            "namespace",
            NamespaceArgs(name=cfg.namespace, hf_token=args.secrets.hf_token, provider=provider),
            opts=child,
        )
        for model in cfg.models:
            ModelServer(
                model.name,
                ModelServerArgs(
                    model=model,
                    node_pool=cfg.pool_for(model),
                    namespace=namespace.ref,
                    hf_secret_name=namespace.hf_secret_name,
                    request_timeout_sec=cfg.gateway.request_timeout_sec,
                    provider=provider,
                ),
                opts=child,
            )

        pool_api: pulumi.Resource = (
            InferencePoolCrd("inference-pool-crd", provider, opts=child).crd
            if cfg.inference_pool_crd == "install"
            else self.cluster.cluster  # created at minMasterVersion, so GKE has installed the CRD
        )
        certificate = (
            GatewayCertificate(
                "gateway-tls",
                GatewayCertificateArgs(
                    settings=cfg.gateway.tls,
                    project=cfg.project,
                    region=cfg.region,
                    name=cfg.cluster_name,
                    namespace_ref=namespace.ref,
                    certificate_pem=args.secrets.tls_certificate,
                    private_key_pem=args.secrets.tls_private_key,
                    provider=provider,
                ),
                opts=child,
            )
            if cfg.gateway.tls is not None
            else None
        )
        fence = (
            SourceRangePolicy(
                "allowed-sources",
                SourceRangePolicyArgs(
                    project=cfg.project,
                    region=cfg.region,
                    name=cfg.cluster_name,
                    allowed_source_ranges=cfg.gateway.allowed_source_ranges,
                ),
                opts=child,
            )
            if cfg.gateway.allowed_source_ranges
            else None
        )
        self.gateway = Gateway(
            "gateway",
            GatewayArgs(
                project=cfg.project,
                region=cfg.region,
                cluster_name=cfg.cluster_name,
                namespace_ref=namespace.ref,
                settings=cfg.gateway,
                proxy_only_subnet=self.network.proxy_only_subnet,
                subnet=self.network.subnet,
                provider=provider,
                listener_tls=certificate.listener_tls if certificate is not None else None,
                security_policy=fence.policy_name if fence is not None else None,
            ),
            opts=child,
        )

        routes: list[tuple[Route, dict[str, str]]]
        if cfg.routing_mode == "per-model-pools":
            routes = [
                (Route(pool_name(model), model.served_name), {"llm-gateway.dev/model": model.name})
                for model in cfg.models
            ]
            self.served_models = [ServedModel(model.served_name, pool_name(model)) for model in cfg.models]
        else:
            routes = [(Route(UNIFIED_POOL, None), {SERVING_LABEL: "vllm"})]
            self.served_models = [ServedModel(model.served_name, UNIFIED_POOL) for model in cfg.models]

        for route, selector in routes:
            pool = InferencePool(
                route.pool_name,
                InferencePoolArgs(
                    pool_name=route.pool_name,
                    namespace=cfg.namespace,
                    namespace_ref=namespace.ref,
                    selector=selector,
                    models=tuple(m.served_name for m in self.served_models if m.pool == route.pool_name),
                    epp=cfg.epp,
                    image_ref=self.registry.image_ref,
                    image=self.registry.image,
                    pool_api=pool_api,
                    provider=provider,
                ),
                opts=child,
            )
            PoolHealthCheck(
                route.pool_name,
                PoolHealthCheckArgs(
                    pool_name=route.pool_name,
                    pool=pool.pool,
                    epp_service_name=pool.epp_service_name,
                    epp_service=pool.epp_service,
                    namespace_ref=namespace.ref,
                    provider=provider,
                ),
                opts=child,
            )
            self.gateway.route(route, pool.pool)

        # The front door in both modes: the per-model routes match the header it sets, and in either
        # mode it is where API keys are checked before any model server is reached.
        BodyBasedRouter(
            "bbr",
            BodyBasedRouterArgs(
                namespace=cfg.namespace,
                namespace_ref=namespace.ref,
                served_models=cfg.served_names,
                settings=cfg.bbr,
                api_keys=args.secrets.api_keys if cfg.gateway.auth.mode == "api-keys" else None,
                image_ref=self.registry.image_ref,
                image=self.registry.image,
                gateway_name=self.gateway.name,
                gateway=self.gateway.gateway,
                provider=provider,
            ),
            opts=child,
        )

        self.dashboard_url = None
        if cfg.monitoring.enabled:
            self.dashboard_url = Monitoring(
                "monitoring",
                MonitoringArgs(config=cfg, namespace_ref=namespace.ref, provider=provider,
                               after=self.cluster.cluster, webhook_url=args.secrets.alert_webhook_url),
                opts=child,
            ).dashboard_url

        self.gateway_address = self.gateway.ip_address
        tls = cfg.gateway.tls
        host: pulumi.Output[str] = (
            pulumi.Output.from_input(tls.domain) if tls is not None and tls.domain else self.gateway_address
        )
        self.gateway_url = host.apply(lambda h: f"{self.gateway.scheme}://{h}")
        self.dns_records = None
        if certificate is not None and certificate.dns_records is not None and tls is not None:
            domain = tls.domain
            self.dns_records = pulumi.Output.all(certificate.dns_records, self.gateway_address).apply(
                lambda parts: [*parts[0], f"{domain}. A {parts[1]}"]
            )
        served = [model.served_name for model in self.served_models]
        with_key = cfg.gateway.auth.mode == "api-keys"
        self.curls = self.gateway_url.apply(
            lambda url: {name: curl_command(url, name, with_key) for name in served}
        )
        self.image_ref = self.registry.image_ref
        self.kubeconfig = self.cluster.kubeconfig
        self.register_outputs(
            {
                "gatewayAddress": self.gateway_address,
                "gatewayUrl": self.gateway_url,
                "servedModels": self.curls,
                "imageRef": self.image_ref,
                "kubeconfig": self.kubeconfig,
            }
        )
