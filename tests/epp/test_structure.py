"""Rules about the shape of the code that keep the request path easy to add to (issue 15)."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from epp.auth.check import AuthError, unauthenticated
from epp.refusals import RequestError, bodyless, internal_error, missing_model, unknown_model

import epp

ROOT = Path(__file__).resolve().parents[2]
EPP_SRC = Path(epp.__file__).resolve().parent


def _modules(package: Path, prefix: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((prefix, *parts))] = path
    return found


def _runtime_imports(path: Path) -> Iterator[str]:
    """Modules imported when ``path`` is imported (not those only under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _graph() -> dict[str, set[str]]:
    modules = _modules(EPP_SRC, "epp")
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for imported in _runtime_imports(path):
            # Importing a.b.c runs a/__init__ and a/b/__init__ first: those are imported too.
            parts = imported.split(".")
            targets.update(".".join(parts[:n]) for n in range(2, len(parts) + 1))
        graph[name] = {m for m in targets if m in modules and m != name}
    return graph


def test_auth_knows_no_transport() -> None:
    graph = _graph()
    offenders = {
        (module, imported)
        for module, imports in graph.items() if module.startswith("epp.auth")
        for imported in imports if imported.startswith("epp.extproc")
    }
    assert offenders == set(), "epp.auth must not import epp.extproc"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles: Tarjan's strongly connected components of more than one module, less a
    package's re-exports of its own submodules (``a`` importing ``a.b`` while ``a.b`` imports ``a``)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, set()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]


def test_there_is_no_import_cycle_in_epp() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle_through_two_packages_and_allows_re_exports() -> None:
    assert _cycles({"x.a": {"y.b"}, "y.b": {"y.c"}, "y.c": {"x.a"}}) == [["x.a", "y.b", "y.c"]]
    assert _cycles({"x": {"x.a"}, "x.a": {"x"}}) == []


def _exceptions_of(namespace: dict[str, object], module: str) -> Iterator[type[BaseException]]:
    for value in namespace.values():
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module:
            yield value


def _project_exception_classes() -> Iterator[type[BaseException]]:
    for name in sorted(_modules(EPP_SRC, "epp")):
        yield from _exceptions_of(importlib.import_module(name).__dict__, name)
    for package in ("components", "onebox", "bench", "vllmsim", "render"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            yield from _exceptions_of(module.__dict__, info.name)


def test_no_exception_class_is_a_frozen_dataclass() -> None:
    offenders = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _project_exception_classes()
        if dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    ]
    assert offenders == []
    assert any(cls is RequestError for cls in _project_exception_classes())


@contextlib.contextmanager
def _span() -> Iterator[None]:
    """What a tracing span or a timer does: the exception passes through a context manager."""
    yield


@pytest.mark.parametrize(
    "error",
    [
        RequestError(400, "bad", "model", "invalid_json"),
        unknown_model("x", ["a"]),
        bodyless("DELETE", "/v1/models/x"),
        missing_model(),
        internal_error(),
        unauthenticated("no_key"),
        AuthError(429, "slow down", None, "rate_limited", retry_after=3),
    ],
    ids=lambda e: e.reason,
)
def test_every_refusal_passes_through_a_context_manager_unchanged(error: RequestError) -> None:
    with pytest.raises(type(error)) as caught, _span():
        raise error
    assert caught.value is error
    caught.value.add_note("a span may annotate it")
    assert caught.value.status == error.status
    assert caught.value.reason == error.reason
