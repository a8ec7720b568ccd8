"""The driver's modules import one another without a cycle, and a file reaches the driver only
through the parts it is given."""
from __future__ import annotations

import ast
from pathlib import Path

import hermes.driver

DRIVER = Path(hermes.driver.__file__).parent


def _module(path: Path) -> str:
    rel = path.relative_to(DRIVER.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "hermes." + ".".join(parts)


def _driver_imports(path: Path) -> set[str]:
    """The ``hermes.driver`` modules that ``path`` imports, type-checking imports included."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # ``from . import x`` imports the submodule x when there is one.
            names = [f"{name}.{a.name}" for a in node.names] if node.module is None else [name]
        else:
            continue
        out.update(n for n in names if n == "hermes.driver" or n.startswith("hermes.driver."))
    return out


def _graph() -> dict[str, set[str]]:
    graph = {_module(p): _driver_imports(p) for p in DRIVER.rglob("*.py")}
    return {m: {i for i in deps if i in graph and i != m} for m, deps in graph.items()}


def test_driver_modules_import_no_cycle():
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module):] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_file_does_not_import_the_driver_core():
    # HermesFile receives the parts it uses (commands, slots, slot DMA) from Driver.open.
    assert "hermes.driver.core" not in _graph()["hermes.driver.file"]
