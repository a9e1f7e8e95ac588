"""Replicated ext_proc servers (the BBR, each pool's EPP) that survive the loss of any one pod.

Each is on every request's path under FailClose, so: at least two replicas, spread over nodes (a
node drained or lost takes one replica, not all), a rolling update that adds the new pod before it
removes an old one (``maxUnavailable: 0``: never fewer ready replicas than asked for), and a
PodDisruptionBudget that keeps one running through voluntary disruptions (node upgrades, the
autoscaler's scale-down).
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from components.podspec import Fields

ROLLING_UPDATE: Fields = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def spread_over_nodes(selector: dict[str, str]) -> list[Fields]:
    """At most one replica more on any node than on another, while nodes allow it (ScheduleAnyway:
    a single-node pool still runs every replica rather than leaving some pending)."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector},
        }
    ]


def keep_one_running(
    name: str, metadata: Fields, selector: dict[str, str], opts: pulumi.ResourceOptions
) -> k8s.policy.v1.PodDisruptionBudget:
    """A PodDisruptionBudget: voluntary disruptions leave at least one replica running."""
    spec: Fields = {"minAvailable": 1, "selector": {"matchLabels": selector}}
    return k8s.policy.v1.PodDisruptionBudget(name, metadata=metadata, spec=spec, opts=opts)
