"""The package's import structure is one-way: no module imports (even inside a function) a
module that imports it back, so each layer can be read and tested without the ones above it."""

from __future__ import annotations

import ast
from pathlib import Path

import emosent

PACKAGE = Path(emosent.__file__).parent


def imports() -> dict[str, set[str]]:
    """module -> the emosent modules it imports anywhere in its source."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("emosent", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emosent"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("emosent"))
        graph[name] = found - {name}
    return graph


def test_no_module_imports_back_up_the_stack():
    graph = imports()
    # a package's __init__ re-exports its modules: it sits above them, not beside them
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(module: str, path: tuple[str, ...]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join((*path, module))
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            visit(dep, (*path, module))
        state[module] = "done"
        order.append(module)

    for module in sorted(graph):
        visit(module, ())
    assert "emosent.processor" in order and "emosent.model" in order


def test_the_layers():
    graph = imports()
    above_data = {"emosent.processor", "emosent.model", "emosent.features", "emosent.train", "emosent.analyze", "emosent.cli"}
    for module, deps in graph.items():
        if module.startswith("emosent.data"):
            assert not deps & above_data, (module, deps & above_data)
    assert "emosent.model" not in graph["emosent.processor"]
    # configs sit at the bottom, on the encoder registry's names (which import nothing, torch included)
    assert graph["emosent.config"] == {"emosent.registry"} and graph["emosent.registry"] == set()
