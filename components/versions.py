"""The cluster's version: chosen by its release channel, checked at preview, never pinned to a patch.

GKE retires patch versions within months, so a stack file naming one fails on a later first ``up``
(``Error 400: Master version "..." is unsupported``). Instead the stack names a release channel and
the program knows the lowest version it needs (:attr:`PlatformConfig.required_gke_version`). At
preview it asks GKE which versions the channel offers in the zone
(``gcp.container.get_engine_versions``) and decides:

- the channel's default qualifies: no version is asked for; GKE creates the cluster at its default;
- only the channel's newest qualifies: that version is asked for (``minMasterVersion``), since the
  default would lack what the stack needs. The cluster ignores later changes of this input, so a
  newer channel version on a later preview upgrades nothing;
- none qualifies: the preview fails with :class:`ConfigError` naming ``platform.releaseChannel``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi_gcp as gcp

from components.config import ConfigError, PlatformConfig

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-gke\.(\d+))?$")


def version_key(version: str) -> tuple[int, int, int, int]:
    """``1.34.0-gke.1626000`` -> ``(1, 34, 0, 1626000)``, comparable; ValueError for anything else."""
    match = _VERSION.fullmatch(version.strip())
    if match is None:
        raise ValueError(f"{version!r} is not a GKE version (1.X.Y-gke.N)")
    major, minor, patch, build = match.groups()
    return int(major), int(minor), int(patch), int(build or 0)


def at_least(version: str, minimum: str) -> bool:
    return version_key(version) >= version_key(minimum)


@dataclass(frozen=True)
class ChannelVersions:
    """What GKE offers one release channel in one location."""

    channel: str
    default: str | None
    latest: str | None


def channel_versions(
    channel: str, defaults: Mapping[str, str] | None, latest: Mapping[str, str] | None
) -> ChannelVersions:
    return ChannelVersions(channel, (defaults or {}).get(channel), (latest or {}).get(channel))


def choose_master_version(cfg: PlatformConfig, offered: ChannelVersions, location: str) -> str | None:
    """The version to ask for (None: the channel's default), or ConfigError when none qualifies."""
    required = cfg.required_gke_version
    if required is None:
        return None
    if offered.default is not None and at_least(offered.default, required):
        return None
    if offered.latest is not None and at_least(offered.latest, required):
        return offered.latest
    raise ConfigError(
        [
            f"platform.releaseChannel: {offered.channel} offers no GKE version >= {required} in "
            f"{location} (default {offered.default or 'none'}, newest {offered.latest or 'none'}); "
            f"that version is the first that ships the InferencePool CRD (inferencePoolCrd: gke-managed). "
            "Choose a faster channel (RAPID), or set platform.inferencePoolCrd: install"
        ]
    )


def resolve_master_version(cfg: PlatformConfig) -> str | None:
    """Ask GKE (an invoke, answered at preview) and :func:`choose_master_version`; None when nothing is
    required of the version."""
    if cfg.required_gke_version is None:
        return None
    result = gcp.container.get_engine_versions(location=cfg.zone, project=cfg.project)
    offered = channel_versions(
        cfg.release_channel, result.release_channel_default_version, result.release_channel_latest_version
    )
    return choose_master_version(cfg, offered, cfg.zone)
