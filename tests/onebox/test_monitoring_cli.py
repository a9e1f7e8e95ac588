"""``python -m onebox run --monitoring`` without Prometheus installed: a clear error, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from onebox.cli import main


def test_without_prometheus_on_path_the_box_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["run", "--preset", "gpu", "--monitoring"]) == 2
    error = capsys.readouterr().err
    assert "'prometheus' is not on PATH" in error
    assert "apt-get install -y prometheus" in error
