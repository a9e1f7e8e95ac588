"""Dependencies point one way: bench uses the one box, the one box uses the simulator, never back.

Read from the source (every import, those under ``TYPE_CHECKING`` included), so a cycle fails here
before it fails at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("vllmsim", "onebox", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The project modules ``path`` imports (absolute names, only vllmsim, onebox and bench)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            modules[module_name(path)] = imports_of(path)
    return modules


def cycle_through(start: str, edges: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start, if there is one."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in edges.get(node, set()):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_one_box_and_the_simulator_never_import_the_benchmark() -> None:
    offenders = {
        module: sorted(i for i in imported if i.startswith("bench"))
        for module, imported in graph().items()
        if module.split(".")[0] in ("onebox", "vllmsim")
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_the_simulator_does_not_know_the_one_box() -> None:
    offenders = {m: i for m, i in graph().items() if m.startswith("vllmsim") and any(
        x.startswith("onebox") for x in i)}
    assert offenders == {}


def test_no_module_imports_itself_through_others() -> None:
    edges = graph()
    cycles = {m: c for m in edges if (c := cycle_through(m, edges))}
    assert cycles == {}


def test_the_simulator_routes_do_not_import_the_server_that_runs_them() -> None:
    assert "vllmsim.server" not in graph()["vllmsim.api"]


def test_envoy_configurations_are_built_without_process_management() -> None:
    bootstrap = graph()["onebox.envoy.bootstrap"]
    assert not bootstrap & {"onebox.supervisor", "onebox.envoy.process", "onebox.box"}


def test_the_box_starts_envoy_through_the_one_envoy_child_spec() -> None:
    tree = ast.parse((ROOT / "onebox" / "box.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    names = {alias.name for node in imports for alias in node.names}
    assert "envoy_child" in names
    assert "envoy_binary" not in names
    assert "envoy_binary" not in (ROOT / "onebox" / "box.py").read_text()
