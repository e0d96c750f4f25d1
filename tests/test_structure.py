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


# The jobs, each a public function that the CLI and a Python user call, and the names each one
# offers the others. What two jobs share lives below them (segments, runtime, files, records,
# sharded): a job never reaches into another for a helper.
JOBS = {
    "emosent.analyze": {"analyze"},
    "emosent.predict": {"predict", "read_predictions", "PredictResult"},
    "emosent.train": {"train"},
    "emosent.evaluate": {"evaluate", "format_table"},
    "emosent.features": {"extract_features", "Features", "FeatureDataset", "collate_features"},  # the feature cache
    "emosent.serve": {"serve", "create_app"},
    "emosent.fit": {"fuse", "adapt", "train_from", "fit_fusion", "fit_temperature"},
    "emosent.export": {"export"},
}
# Imports still waiting for their move, each with why; an entry no longer used fails the test.
PENDING: dict = {}


def job_of(module: str) -> str | None:
    return next((job for job in JOBS if module == job or module.startswith(job + ".")), None)


def cross_job_imports() -> set[tuple[str, str, str]]:
    """(importing job module, imported job module, name) for every import of one job from another;
    name "*" where a whole job module is imported (its helpers would then be in reach)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("emosent", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        job = job_of(module)
        if job is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emosent"):
                if node.module == "emosent":  # from emosent import features
                    found |= {(module, f"emosent.{a.name}", "*") for a in node.names if job_of(f"emosent.{a.name}") not in (None, job)}
                elif job_of(node.module) not in (None, job):
                    found |= {(module, node.module, a.name) for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {(module, a.name, "*") for a in node.names if job_of(a.name) not in (None, job)}
    return found


def test_jobs_import_only_each_others_public_functions():
    found = cross_job_imports()
    helpers = sorted(f"{module} imports {name} from {other}" for module, other, name in found - set(PENDING)
                     if name not in JOBS[job_of(other)])
    assert not helpers, "a job reaches into another for a helper: move it down (segments, runtime, files, records, sharded): " + "; ".join(helpers)
    assert set(PENDING) <= found, f"no longer imported, drop from PENDING: {set(PENDING) - found}"


def test_the_shared_layers_import_no_job():
    graph = imports()
    for module in ("emosent.segments", "emosent.runtime", "emosent.files", "emosent.records", "emosent.summary", "emosent.speakers",
                   "emosent.sharded"):
        jobs = {dep for dep in graph.get(module, ()) if job_of(dep)}
        assert not jobs, (module, jobs)
