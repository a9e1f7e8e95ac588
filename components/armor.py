"""Cloud Armor: a regional security policy that lets only the configured client ranges through.

Attached to every backend of the Gateway by its GCPBackendPolicy (``default.securityPolicy``, by
name); the load balancer answers anyone else with a 403 before a model server is touched. The
policy is regional because the Gateway's load balancer is (a global policy cannot attach to a
regional backend service). A rule matches at most 10 ranges (Cloud Armor's basic match limit), so
the ranges are spread over consecutive allow rules; the default rule denies.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

RANGES_PER_RULE = 10
FIRST_PRIORITY = 1000
DEFAULT_RULE_PRIORITY = 2147483647
"""Cloud Armor's default rule: the lowest priority, matching every source."""


@dataclass(frozen=True)
class SourceRangePolicyArgs:
    project: str
    region: str
    name: str
    allowed_source_ranges: list[str]


def allow_rules(ranges: list[str]) -> list[dict[str, object]]:
    """Allow rules of at most :data:`RANGES_PER_RULE` ranges each, then the default deny."""
    rules: list[dict[str, object]] = [
        {
            "action": "allow",
            "priority": FIRST_PRIORITY + index,
            "description": "allowed client ranges (platform.gateway.allowedSourceRanges)",
            "match": {
                "versioned_expr": "SRC_IPS_V1",
                "config": {"src_ip_ranges": ranges[start : start + RANGES_PER_RULE]},
            },
        }
        for index, start in enumerate(range(0, len(ranges), RANGES_PER_RULE))
    ]
    rules.append(
        {
            "action": "deny(403)",
            "priority": DEFAULT_RULE_PRIORITY,
            "description": "everyone else",
            "match": {"versioned_expr": "SRC_IPS_V1", "config": {"src_ip_ranges": ["*"]}},
        }
    )
    return rules


class SourceRangePolicy(pulumi.ComponentResource):
    """The regional Cloud Armor policy; ``policy_name`` is what a GCPBackendPolicy references."""

    policy: gcp.compute.RegionSecurityPolicy
    policy_name: pulumi.Output[str]

    def __init__(
        self, name: str, args: SourceRangePolicyArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gke-llm-gateway:index:SourceRangePolicy", name, None, opts)
        self.policy = gcp.compute.RegionSecurityPolicy(
            f"{name}-policy",
            name=f"{args.name}-allowed-sources",
            project=args.project,
            region=args.region,
            type="CLOUD_ARMOR",
            description="Only platform.gateway.allowedSourceRanges reach the model servers",
            rules=allow_rules(args.allowed_source_ranges),  # type: ignore[arg-type]
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.policy_name = self.policy.name
        self.register_outputs({"securityPolicy": self.policy_name})
