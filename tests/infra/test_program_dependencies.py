"""What `pulumi up` installs is what the program imports: the epp package comes with the program."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _imports_epp(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "epp":
            return True
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "epp" for a in node.names):
            return True
    return False


def test_the_program_imports_the_epp_package_and_pulumi_installs_it() -> None:
    program = [ROOT / "__main__.py", *sorted((ROOT / "components").glob("*.py"))]

    assert any(_imports_epp(path) for path in program)
    requirements = _requirements()
    assert "-e ./epp" in requirements
    assert requirements.index("-e ./epp") < requirements.index("-e .")


def test_the_pulumi_project_installs_those_requirements_into_its_virtualenv() -> None:
    project = (ROOT / "Pulumi.yaml").read_text(encoding="utf-8")

    assert "toolchain: pip" in project
    assert "virtualenv: .venv" in project


def test_a_worktree_finds_the_shared_folder_beside_its_main_clone(tmp_path: Path) -> None:
    from tests.infra.shared import shared_dir

    clone, worktree = tmp_path / "clones" / "main", tmp_path / "wt" / "stacks"
    (clone / ".git" / "worktrees" / "stacks").mkdir(parents=True)
    (clone / ".git" / "worktrees" / "stacks" / "commondir").write_text("../..\n")
    worktree.mkdir(parents=True)
    (worktree / ".git").write_text(f"gitdir: {clone}/.git/worktrees/stacks\n")
    (tmp_path / "clones" / "shared").mkdir()

    assert shared_dir(worktree) == tmp_path / "clones" / "shared"
    assert shared_dir(clone) == tmp_path / "clones" / "shared"
    assert shared_dir(tmp_path / "elsewhere") == tmp_path / "shared"  # missing: tests then fail on it
