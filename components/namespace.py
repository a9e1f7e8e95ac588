"""Namespace: where every workload of the platform lives, plus the Hugging Face token Secret.

The namespace enforces the ``restricted`` Pod Security Standard, or ``baseline`` when the stack
serves a model on TPUs (whose servers run as uid 0, unprivileged: docs/tpu-pod-security.md); either
way it warns and audits against ``restricted``. The token arrives as a Pulumi
secret (``pulumi config set --secret hfToken ...``) and only ever becomes a Kubernetes Secret;
it never appears in plain text in the state, the plan or a Deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_kubernetes as k8s

from components.podspec import labels, object_meta

HF_TOKEN_SECRET_KEY = "token"


@dataclass(frozen=True)
class NamespaceArgs:
    name: str
    hf_token: pulumi.Output[str] | None
    provider: k8s.Provider
    pod_security: Literal["restricted", "baseline"] = "restricted"


def _as_secret(value: pulumi.Output[str]) -> pulumi.Output[str]:
    """Keep the token secret whatever marked it (or forgot to)."""
    secret: pulumi.Output[str] = pulumi.Output.secret(value)
    return secret


class Namespace(pulumi.ComponentResource):
    """The platform's namespace and, when a token is configured, its Hugging Face Secret."""

    namespace: k8s.core.v1.Namespace
    name: str
    ref: pulumi.Output[str]
    """The namespace name as an Output: objects using it are created after the Namespace."""
    hf_secret_name: str | None

    def __init__(self, name: str, args: NamespaceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gke-llm-gateway:index:Namespace", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        self.name = args.name
        self.namespace = k8s.core.v1.Namespace(
            args.name,
            metadata={
                "name": args.name,
                "labels": labels("namespace", args.name)
                | {
                    "pod-security.kubernetes.io/enforce": args.pod_security,
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    "pod-security.kubernetes.io/warn": "restricted",
                    "pod-security.kubernetes.io/audit": "restricted",
                },
            },
            opts=child,
        )
        self.ref = self.namespace.metadata.apply(lambda metadata: str(metadata.name))
        self.hf_secret_name = None
        if args.hf_token is not None:
            self.hf_secret_name = "hf-token"
            k8s.core.v1.Secret(
                f"{args.name}-hf-token",
                metadata=object_meta(self.hf_secret_name, self.ref, "hf-token", args.name),
                type="Opaque",
                string_data={HF_TOKEN_SECRET_KEY: _as_secret(args.hf_token)},
                opts=child,
            )
        self.register_outputs({"namespace": args.name})
