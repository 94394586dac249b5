"""The package's imports: no cycle, and each layer below the ones that use it.

Every import counts: at the top of a module, under ``TYPE_CHECKING``, inside a function.

- ``transport/`` (HTTP front, frames, codecs) imports neither the model server nor the gateway;
- ``server/`` (a model server) does not import the gateway;
- ``gateway/observe/`` (metrics, status, views, OpenAPI) reads snapshots only: the handles, the
  route table, the states, never the supervisor, the reloads, the routing or the gateway itself;
- ``client/`` (``bis`` and the Python client) speaks HTTP: it imports none of the serving code;
- the package's root modules (configuration, errors, JSON...) import no gateway code (the
  package's ``__init__`` gathers the public names, ``FlaskGateway`` among them).

``from package import name`` counts as an import of the module ``package.name`` when there is
one, else of ``package`` (importing any module runs its packages' ``__init__`` too: that is
Python's rule for every import, not a dependency of one module on another).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "basic_inference_server"
NAME = PACKAGE.name


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """The package's modules ``module`` imports, wherever the import statement is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{alias.name}" for alias in node.names]  # a module, else a name in ``base``
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # "pkg.module.function" -> "pkg.module"
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith(NAME):
                found.add(name)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in GRAPH[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return found


def _area(module: str) -> str:
    """``transport``, ``server``, ``gateway``, ``gateway.observe``, ``client``, ``root``, or
    ``api`` (the package itself, whose ``__init__`` gathers the public names)."""
    parts = module.split(".")[1:]
    if not parts:
        return "api"
    if len(parts) == 1 and (PACKAGE / f"{parts[0]}.py").exists():
        return "root"
    if parts[:2] == ["gateway", "observe"]:
        return "gateway.observe"
    return parts[0]


OBSERVE_MAY_READ = {f"{NAME}.gateway.supervision.handle", f"{NAME}.gateway.remote.handle",
                    f"{NAME}.gateway.routing.routes"}
FORBIDDEN = {
    "transport": {"server", "gateway", "gateway.observe", "client"},
    "server": {"gateway", "gateway.observe", "client"},
    "client": {"transport", "server", "gateway", "gateway.observe"},
    "root": {"gateway", "gateway.observe", "client"},
}


def test_the_graph_sees_the_package():
    assert len(MODULES) > 80
    assert f"{NAME}.gateway.core" in GRAPH[f"{NAME}.gateway.cli"]  # a plain relative import
    assert f"{NAME}.server.discovery" in GRAPH[f"{NAME}.config"]  # "from .server.discovery import ..."


def test_no_import_cycle_counting_type_checking_and_function_imports():
    assert _cycles() == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_the_layers_below_it(module):
    area = _area(module)
    wrong = sorted(dep for dep in GRAPH[module] if _area(dep) in FORBIDDEN.get(area, set()))
    if area == "gateway.observe":
        wrong += sorted(dep for dep in GRAPH[module] if dep.startswith(f"{NAME}.gateway.")
                        and _area(dep) != "gateway.observe" and dep not in OBSERVE_MAY_READ)
    assert wrong == [], f"{module} ({area}) imports {wrong}"


def test_a_cycle_would_be_found(monkeypatch):
    """The check itself: a cycle added to the graph is reported."""
    a, b = f"{NAME}.gateway.core", f"{NAME}.gateway.app"
    monkeypatch.setitem(GRAPH, b, GRAPH[b] | {a})
    assert any(a in cycle and b in cycle for cycle in _cycles())
