"""A layer imports only the layers below it (checked on the source, import by import)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import hermes

SRC = Path(hermes.__file__).parent
ARCHITECTURE = SRC.parents[1] / "docs" / "architecture.md"

#: package -> the hermes packages its modules may import (besides the package itself). A package
#: is a directory under src/hermes or a top-level module; its modules share its rule. The one
#: module with a rule of its own is ``transport.base``, the ABC the driver programs against, which
#: stays free of every layer; ``transport.inproc`` is the bridge to a model in this process, so
#: ``transport`` may import ``device`` while its wire transports reach it only through ``vfio``
#: (checked by ``test_wire_transports_never_import_the_device_side``).
ALLOWED = {
    "hermes.errors": set(),
    "hermes.regs": set(),
    "hermes.nvme_regs": {"hermes.regs"},
    "hermes.engine": {"hermes.errors"},
    "hermes.device": {"hermes.errors", "hermes.regs", "hermes.nvme_regs", "hermes.engine"},
    "hermes.vfio": {"hermes.errors", "hermes.regs"},
    "hermes.server": {"hermes.errors", "hermes.regs", "hermes.device", "hermes.vfio"},
    "hermes.transport": {"hermes.errors", "hermes.regs", "hermes.vfio", "hermes.device"},
    "hermes.transport.base": set(),
    "hermes.driver": {"hermes.errors", "hermes.regs", "hermes.nvme_regs", "hermes.transport"},
    "hermes.lib": {"hermes.errors", "hermes.regs", "hermes.nvme_regs", "hermes.engine",
                   "hermes.driver", "hermes.transport"},
    "hermes.rtl": {"hermes.errors", "hermes.regs", "hermes.engine"},
    "hermes.dask": {"hermes.errors", "hermes.regs", "hermes.engine", "hermes.lib"},
}
#: The tools: they may import anything.
TOP = {"hermes", "hermes.cli", "hermes.benchmarks", "hermes.conformance",
       "hermes.conformance_pyelf", "hermes.__main__"}
#: The device side of the VFIO boundary, which a client transport over the wire must not import.
DEVICE_SIDE = {"hermes.device", "hermes.server"}

def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("hermes"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("hermes"):
                if node.module is None or name in ("hermes",):
                    out.update(f"{name}.{a.name}" for a in node.names)
                else:
                    out.add(name)
    return out


def _rule(module: str) -> tuple[str, set[str]] | None:
    best = None
    for prefix in ALLOWED:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    return (best, ALLOWED[best]) if best else None


def _within(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_every_module_has_a_rule_or_is_top_level():
    for path in SRC.rglob("*.py"):
        module = _module_name(path)
        top = any(module == t or module.startswith(t + ".") for t in TOP)
        assert top or _rule(module), f"{module} belongs to no layer"


def test_layers_import_only_downwards():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        rule = _rule(module)
        if rule is None:
            continue
        own, allowed = rule
        ok = allowed | {own}
        for name in _imports(path, module):
            if not _within(name, ok):
                bad.append(f"{module} imports {name}")
    assert not bad, "\n".join(bad)


def test_wire_transports_never_import_the_device_side():
    """A transport that speaks the VFIO wire format reaches the device only through the wire."""
    bad = []
    for path in sorted((SRC / "transport").rglob("*.py")):
        module = _module_name(path)
        names = _imports(path, module)
        if any(_within(n, {"hermes.vfio"}) for n in names):
            bad += [f"{module} imports {n}" for n in names if _within(n, DEVICE_SIDE)]
    assert not bad, "\n".join(bad)


def _table_names(cell: str) -> list[str]:
    """The backticked names of a table cell, ``{a,b}`` expanded."""
    out = []
    for name in re.findall(r"`([^`]+)`", cell):
        m = re.fullmatch(r"(.*)\{(.*)\}", name)
        out += [m.group(1) + part.strip() for part in m.group(2).split(",")] if m else [name]
    return out


def _documented_rules() -> dict[str, set[str] | None]:
    """The "Who imports whom" table of docs/architecture.md: package -> what it may import
    (None for "anything")."""
    text = ARCHITECTURE.read_text()
    section = text.split("## Who imports whom", 1)[1].split("\n## ", 1)[0]
    rules: dict[str, set[str] | None] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or not cells[0].startswith("`"):
            continue
        may = None if cells[1] == "anything" else \
            {f"hermes.{n}" for n in _table_names(cells[1])}
        for package in _table_names(cells[0]):
            assert package not in rules, f"{package} has two rows"
            rules[package] = may
    return rules


def test_architecture_table_matches_the_rules():
    """docs/architecture.md's "Who imports whom" names the same packages and rules as ALLOWED."""
    documented = _documented_rules()
    expected: dict[str, set[str] | None] = {**ALLOWED, **dict.fromkeys(TOP)}
    assert documented == expected


def test_every_package_has_its_rule():
    """Every package (directory or top-level module) has a rule or is a tool."""
    packages = {_module_name(p) for p in SRC.glob("*/__init__.py")} | \
        {_module_name(p) for p in SRC.glob("*.py")}
    missing = sorted(p for p in packages if p not in ALLOWED and p not in TOP)
    assert not missing, missing


def test_every_module_starts_with_a_one_line_docstring():
    for path in SRC.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{path} has no module docstring"
        assert doc.splitlines()[0].strip(), path
