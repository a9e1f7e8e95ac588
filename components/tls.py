"""TLS for the Gateway's HTTPS listener: a Google-managed regional certificate, or a self-managed one.

The regional load balancers behind ``gke-l7-regional-external-managed`` and ``gke-l7-rilb`` are
Envoy-based: their target proxy references Certificate Manager certificates directly (no certificate
map), named in the listener's ``tls.options`` as ``networking.gke.io/cert-manager-certs``. A regional
Google-managed certificate can only be authorized through DNS (load balancer authorization covers
neither regional nor wildcard certificates), so the program creates a regional DnsAuthorization and
exports the CNAME record to add; Certificate Manager issues and renews the certificate once it
resolves. For trials, a self-managed chain and key (Pulumi secrets) become a ``kubernetes.io/tls``
Secret the listener references through ``certificateRefs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from components.config import TlsSettings
from components.podspec import Fields, object_meta
from components.secrets import as_secret

CERT_MANAGER_CERTS_OPTION = "networking.gke.io/cert-manager-certs"
TLS_SECRET_NAME = "gateway-tls"


@dataclass(frozen=True)
class GatewayCertificateArgs:
    settings: TlsSettings
    project: str
    region: str
    name: str
    """Prefix of the Certificate Manager resource names (the cluster's name)."""
    namespace_ref: pulumi.Input[str]
    certificate_pem: pulumi.Output[str] | None
    private_key_pem: pulumi.Output[str] | None
    provider: k8s.Provider


class GatewayCertificate(pulumi.ComponentResource):
    """The certificate of the HTTPS listener and the ``tls`` block that names it."""

    listener_tls: Fields
    dns_records: pulumi.Output[list[str]] | None
    """Google-managed only: the DNS records to create (authorization CNAME), one line each."""

    def __init__(
        self, name: str, args: GatewayCertificateArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gke-llm-gateway:index:GatewayCertificate", name, None, opts)
        settings = args.settings
        self.dns_records = None
        if settings.certificate == "google-managed":
            assert settings.domain is not None  # the config requires it
            authorization = gcp.certificatemanager.DnsAuthorization(
                f"{name}-dns-authorization",
                name=f"{args.name}-gateway",
                project=args.project,
                location=args.region,
                domain=settings.domain,
                description=f"Proves control of {settings.domain} for the gateway's certificate",
                opts=pulumi.ResourceOptions(parent=self),
            )
            certificate = gcp.certificatemanager.Certificate(
                f"{name}-certificate",
                name=f"{args.name}-gateway",
                project=args.project,
                location=args.region,
                scope="DEFAULT",
                managed={"domains": [settings.domain], "dns_authorizations": [authorization.id]},
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.listener_tls = {
                "mode": "Terminate",
                "options": {CERT_MANAGER_CERTS_OPTION: certificate.name},
            }
            self.dns_records = authorization.dns_resource_records.apply(
                lambda records: [f"{r.name} {r.type} {r.data}" for r in records or []]
            )
        else:
            if args.certificate_pem is None or args.private_key_pem is None:
                raise ValueError("a self-managed certificate needs its PEM chain and key")
            secret = k8s.core.v1.Secret(
                TLS_SECRET_NAME,
                metadata=object_meta(TLS_SECRET_NAME, args.namespace_ref, "tls", TLS_SECRET_NAME),
                type="kubernetes.io/tls",
                string_data={
                    "tls.crt": as_secret(args.certificate_pem),
                    "tls.key": as_secret(args.private_key_pem),
                },
                opts=pulumi.ResourceOptions(parent=self, provider=args.provider),
            )
            self.listener_tls = {
                "mode": "Terminate",
                "certificateRefs": [{"group": "", "kind": "Secret", "name": secret.metadata.name}],
            }
        self.register_outputs({"certificate": settings.certificate})
