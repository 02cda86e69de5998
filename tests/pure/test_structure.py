"""The core's shape, checked: no import cycles, routes that only reach services, one door to each resource."""

from __future__ import annotations

import ast
from pathlib import Path

from orchestrator.config import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "orchestrator"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The orchestrator modules a module imports at import time (not inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("orchestrator"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("orchestrator"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        # An import of a package runs its __init__; an import of a name may be a submodule.
        edges[name] = {target for target in imports(path) if target in modules and target != name}
    return edges


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_routes_reach_only_services() -> None:
    allowed = ("orchestrator.api", "orchestrator.services", "orchestrator.schemas", "orchestrator.errors")
    allowed += ("orchestrator.events.log", "orchestrator.runtime.base", "orchestrator.templates")  # types only
    for path in (PACKAGE / "api").rglob("*.py"):
        outside = {target for target in imports(path) if not target.startswith(allowed)}
        assert outside == set(), f"{path.name} reaches {outside}"


def test_one_mqtt_connection_and_one_database_door() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if "MqttConnection(" in text:
            # The bus, plus the short connections that end or restore someone else's broker session.
            assert module_name(path) in ("orchestrator.bus", "orchestrator.broker.sessions"), path
        assert "run_db" not in text and "handler.mqtt" not in text, path
        if "sessionmaker(" in text or "create_engine(" in text:
            assert module_name(path) in ("orchestrator.db.session", "orchestrator.db.migrations.env"), path
