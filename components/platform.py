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
from epp.routing import split_into_pools

from components.apis import GoogleApis, GoogleApisArgs, after_apis, required_apis
from components.armor import SourceRangePolicy, SourceRangePolicyArgs
from components.autoscaling import elastic, wake_timeout
from components.bbr import BodyBasedRouter, BodyBasedRouterArgs
from components.cluster import Cluster, ClusterArgs
from components.config import ModelSpec, PlatformConfig
from components.gateway import Gateway, GatewayArgs, Route
from components.health import PoolHealthCheck, PoolHealthCheckArgs
from components.inference_extension import InferencePool, InferencePoolArgs, InferencePoolCrd
from components.mirror import DockerHubMirror, DockerHubMirrorArgs
from components.model_server import ModelServer, ModelServerArgs
from components.monitoring import Monitoring, MonitoringArgs
from components.namespace import Namespace, NamespaceArgs
from components.network import Network, NetworkArgs
from components.podspec import MODEL_LABEL, SERVING_LABEL
from components.registry import Registry, RegistryArgs
from components.secrets import StackSecrets
from components.tls import GatewayCertificate, GatewayCertificateArgs
from components.versions import resolve_master_version

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
    model_images: pulumi.Output[dict[str, str]]
    kubeconfig: pulumi.Output[str]
    dashboard_url: pulumi.Output[str] | None

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        # Asks GKE which versions the channel offers: a preview fails here, before any resource.
        master_version = resolve_master_version(args.config)
        super().__init__("gke-llm-gateway:index:Platform", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        if cfg.enable_apis:
            managed = cfg.gateway.tls is not None and cfg.gateway.tls.certificate == "google-managed"
            apis = GoogleApis("apis", GoogleApisArgs(cfg.project, required_apis(managed)), opts=child)
            child = pulumi.ResourceOptions(parent=self, transformations=[after_apis(apis)])

        self.network = Network(
            "network",
            NetworkArgs(
                project=cfg.project,
                region=cfg.region,
                name=cfg.cluster_name,
                ranges=cfg.network,
                private_nodes=cfg.private_nodes,
            ),
            opts=child,
        )
        self.cluster = Cluster(
            "cluster",
            ClusterArgs(config=cfg, network=self.network, master_version=master_version),
            opts=child,
        )
        provider = self.cluster.provider
        self.registry = Registry(
            "registry",
            RegistryArgs(project=cfg.project, region=cfg.region, repository=cfg.artifact_repository),
            opts=child,
        )
        namespace = Namespace(
            "namespace",
            NamespaceArgs(
                name=cfg.namespace,
                hf_token=args.secrets.hf_token,
                provider=provider,
                pod_security="baseline" if cfg.serves_on_tpu else "restricted",
            ),
            opts=child,
        )
        mirror = (
            DockerHubMirror("docker-hub", DockerHubMirrorArgs(cfg.project, cfg.region), opts=child)
            if cfg.docker_hub_mirror
            else None
        )
        model_images: dict[str, pulumi.Output[str]] = {}
        servers: dict[str, ModelServer] = {}
        for model in cfg.models:
            server = servers[model.name] = ModelServer(
                model.name,
                ModelServerArgs(
                    model=model,
                    node_pool=cfg.pool_for(model),
                    namespace=namespace.ref,
                    hf_secret_name=namespace.hf_secret_name,
                    request_timeout_sec=cfg.gateway.request_timeout_sec,
                    provider=provider,
                    wait_for_ready=cfg.wait_for_models,
                    mirror=mirror,
                ),
                opts=child,
            )
            model_images[model.name] = server.image_ref
        self.model_images = pulumi.Output.all(**model_images).apply(dict)

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
        pools = split_into_pools(cfg.routing_mode, cfg.models, pool_of=pool_name, unified=UNIFIED_POOL)
        self.served_models = [ServedModel(m.served_name, pool.name) for pool in pools for m in pool.models]
        routes: list[Route] = []
        pool_of: dict[str, tuple[InferencePool, str]] = {}
        for pool in pools:
            if pool.by_model:
                [model] = pool.models  # a pool per model: its route matches that model
                selector, served_name = {MODEL_LABEL: model.name}, model.served_name
            else:
                selector, served_name = {SERVING_LABEL: "vllm"}, None
            inference_pool = InferencePool(
                pool.name,
                InferencePoolArgs(
                    pool_name=pool.name,
                    namespace=cfg.namespace,
                    namespace_ref=namespace.ref,
                    selector=selector,
                    models=tuple(m.served_name for m in pool.models),
                    epp=cfg.epp,
                    image_ref=self.registry.image_ref,
                    image=self.registry.image,
                    pool_api=pool_api,
                    provider=provider,
                    wake_timeout_sec=wake_timeout(pool.models),
                    objectives={o.name: o.priority for m in pool.models for o in m.objectives},
                ),
                opts=child,
            )
            pool_of |= {m.name: (inference_pool, pool.name) for m in pool.models}
            PoolHealthCheck(
                pool.name,
                PoolHealthCheckArgs(
                    pool_name=pool.name,
                    pool=inference_pool.pool,
                    namespace_ref=namespace.ref,
                    provider=provider,
                ),
                opts=child,
            )
            routes.append(Route(pool.name, served_name, inference_pool.pool))

        elastic(self, cfg, self.cluster.cluster, servers, pool_of, namespace.ref, provider)

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
                routes=routes,
            ),
            opts=child,
        )

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
                "modelImages": self.model_images,
                "kubeconfig": self.kubeconfig,
            }
        )
