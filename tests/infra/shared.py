"""Where the reference data of ``../shared`` is: beside the project, or beside its main worktree.

A git worktree (``git worktree add``) lives elsewhere than the clone it belongs to, and the shared
folder sits beside the clone; tests that need it fail when neither place has it, never skip.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _main_worktree(root: Path) -> Path | None:
    """The clone a worktree belongs to: ``.git`` is then a file naming ``<clone>/.git/worktrees/<name>``."""
    marker = root / ".git"
    if not marker.is_file():
        return None
    text = marker.read_text(encoding="utf-8").strip()
    if not text.startswith("gitdir:"):
        return None
    gitdir = (root / text.removeprefix("gitdir:").strip()).resolve()
    common = gitdir / "commondir"
    if not common.is_file():
        return gitdir.parent
    return (gitdir / common.read_text(encoding="utf-8").strip()).resolve().parent


def shared_dir(root: Path = ROOT) -> Path:
    """``../shared`` of the project (or of its main worktree); the first candidate when none exists."""
    candidates = [root.parent / "shared"]
    main = _main_worktree(root)
    if main is not None:
        candidates.append(main.parent / "shared")
    return next((path for path in candidates if path.is_dir()), candidates[0])


SCHEMAS = shared_dir() / "schemas"
