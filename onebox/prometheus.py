"""The one box's Prometheus (``python -m onebox run --monitoring``): a real ``prometheus`` that scrapes
every child of the box and evaluates the alert rules of ``monitoring.definitions``, the same
PromQL a GKE stack's GMP Rules evaluate (only windows and ``for`` durations are shorter).

It runs as a supervised child of the box, with its own config, data directory and a free port on
127.0.0.1 (nothing depends on a system-wide Prometheus service the Debian package may install).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

from monitoring.definitions import BBR_JOB, EPP_JOB, VLLM_JOB, Settings
from monitoring.render import prometheus_config, prometheus_rule_file
from onebox.probes import http_ok, until_ready
from onebox.supervisor import Child, ChildSpec, Ports, Supervisor, free_port


class _Server(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def metrics_port(self) -> int: ...


class _Pod(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...


class OneBox(Protocol):
    """What Prometheus needs of ``onebox.box.OneBox`` (which imports this module)."""

    @property
    def epps(self) -> Mapping[str, Sequence[_Server]]: ...

    @property
    def bbrs(self) -> Sequence[_Server]: ...

    @property
    def pods(self) -> Sequence[_Pod]: ...

    @property
    def supervisor(self) -> Supervisor: ...

    @property
    def startup_timeout(self) -> float: ...

INSTALL_HINT = (
    "install it (Debian/Ubuntu: `sudo apt-get install -y prometheus`, which provides prometheus and "
    "promtool) or put both binaries on PATH"
)

BOX_SETTINGS = Settings(
    window="30s", no_ready_pod_for="10s", five_xx_for="30s", ttft_for="30s", kv_cache_for="30s",
    replica_down_for="10s", rate_limited_for="30s",
)
"""Alert settings for the box: windows and ``for`` durations that fit in a test."""


class PrometheusMissing(RuntimeError):
    """``prometheus`` (or ``promtool``) is not on PATH."""


def find_binary(name: str) -> str:
    """``name`` on PATH, or :class:`PrometheusMissing` saying how to install it."""
    found = shutil.which(name)
    if found is None:
        raise PrometheusMissing(f"{name!r} is not on PATH; {INSTALL_HINT}")
    return found


@dataclass
class BoxPrometheus:
    """Prometheus for one box; ``start(box)`` once the box's children are up."""

    settings: Settings = BOX_SETTINGS
    scrape_interval: str = "1s"
    binary: str = field(default_factory=lambda: find_binary("prometheus"))
    port: int = 0
    child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def targets(self, box: OneBox) -> dict[str, list[tuple[str, str]]]:
        """Job -> (host:port, pod name) of every EPP, BBR and pod of the box."""
        epps = [e for replicas in box.epps.values() for e in replicas]
        return {
            EPP_JOB: [(f"127.0.0.1:{e.metrics_port}", e.name) for e in epps],
            BBR_JOB: [(f"127.0.0.1:{b.metrics_port}", b.name) for b in box.bbrs],
            VLLM_JOB: [(p.address, p.name) for p in box.pods],
        }

    def write_config(self, box: OneBox, workdir: Path) -> Path:
        rules = workdir / "rules.yaml"
        groups = prometheus_rule_file(self.settings, self.scrape_interval)
        rules.write_text(yaml.safe_dump(groups, sort_keys=False))
        config = workdir / "prometheus.yaml"
        document: dict[str, Any] = prometheus_config(
            self.targets(box), [str(rules)], scrape_interval=self.scrape_interval,
            evaluation_interval=self.scrape_interval,
        )
        config.write_text(yaml.safe_dump(document, sort_keys=False))
        return config

    def spec(self, config: Path, data: Path) -> ChildSpec:
        self.port = self.port or free_port("127.0.0.1")
        address = f"127.0.0.1:{self.port}"

        def argv(_ports: Ports) -> list[str]:
            return [
                self.binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
                f"--web.listen-address={address}", "--storage.tsdb.retention.time=1d", "--log.level=warn",
            ]  # fmt: skip

        return ChildSpec("prometheus", argv, probe=lambda _ports: http_ok(f"http://{address}/-/ready"))

    async def start(self, box: OneBox, workdir: Path) -> None:
        """Write the config for ``box``'s children and start Prometheus; return once it is ready."""
        data = workdir / "prometheus-data"
        data.mkdir(exist_ok=True)
        self.child = await box.supervisor.launch(self.spec(self.write_config(box, workdir), data))
        await box.supervisor.wait_ready(self.child, within=box.startup_timeout)
        # Ready is not scraping yet: Prometheus applies its targets a few seconds after it starts.
        targets = sum(len(members) for members in self.targets(box).values())
        async with httpx.AsyncClient(timeout=5.0) as client:

            async def scraped() -> bool:
                return len(await query(client, self.url, "up")) == targets

            await until_ready(scraped, box.startup_timeout, interval=0.2)


async def query(client: httpx.AsyncClient, url: str, expr: str) -> list[dict[str, Any]]:
    """The result vector of an instant query (``/api/v1/query``)."""
    response = await client.get(f"{url}/api/v1/query", params={"query": expr})
    response.raise_for_status()
    document = response.json()
    if document.get("status") != "success":
        raise ValueError(f"query {expr!r} failed: {document}")
    result: list[dict[str, Any]] = document["data"]["result"]
    return result


async def query_range(
    client: httpx.AsyncClient, url: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    """The series of a range query (``/api/v1/query_range``): each with ``metric`` and ``values``."""
    response = await client.get(
        f"{url}/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": step}
    )
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


async def alerts(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    """The alerts Prometheus holds now (``/api/v1/alerts``), pending and firing."""
    response = await client.get(f"{url}/api/v1/alerts")
    response.raise_for_status()
    held: list[dict[str, Any]] = response.json()["data"]["alerts"]
    return held
