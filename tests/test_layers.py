"""A layer imports only the layers below it (checked on the source, import by import)."""
from __future__ import annotations

import ast
from pathlib import Path

import hermes

SRC = Path(hermes.__file__).parent

#: module prefix -> hermes packages it may import (besides itself). Most specific prefix wins.
ALLOWED = {
    "hermes.errors": set(),
    "hermes.regs": set(),
    # the NVMe controller's published interface, shared by its model and its host driver
    "hermes.nvme_regs": {"hermes.regs"},
    "hermes.engine": {"hermes.errors"},
    "hermes.device": {"hermes.errors", "hermes.regs", "hermes.nvme_regs", "hermes.engine"},
    "hermes.transport.base": set(),
    "hermes.transport.inproc": {"hermes.transport.base", "hermes.device"},
    "hermes.transport": {"hermes.errors", "hermes.regs", "hermes.transport.base",
                         "hermes.vfio.uapi", "hermes.vfio.protocol", "hermes.vfio.mmio",
                         "hermes.vfio.pci", "hermes.vfio"},
    # wire format and kernel structs, shared by the client transports and the server
    "hermes.vfio": {"hermes.errors", "hermes.regs"},
    # the server side: puts a device model behind the wire format
    "hermes.vfio.function": {"hermes.errors", "hermes.regs", "hermes.device", "hermes.vfio"},
    "hermes.vfio.server": {"hermes.errors", "hermes.regs", "hermes.device", "hermes.vfio"},
    "hermes.vfio.fake_kernel": {"hermes.errors", "hermes.regs", "hermes.device", "hermes.vfio"},
    # the driver reaches devices only through a transport (attach() may build the in-process one)
    "hermes.driver": {"hermes.errors", "hermes.regs", "hermes.nvme_regs", "hermes.transport"},
    "hermes.lib": {"hermes.errors", "hermes.regs", "hermes.nvme_regs", "hermes.engine",
                   "hermes.driver", "hermes.transport"},
    "hermes.rtl": {"hermes.errors", "hermes.regs", "hermes.engine"},
    # scale-out over dask.distributed: a library user, on every worker
    "hermes.dask": {"hermes.errors", "hermes.regs", "hermes.engine", "hermes.lib"},
}
TOP = {"hermes", "hermes.cli", "hermes.benchmarks", "hermes.conformance", "hermes.__main__"}


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
        # a package may import itself; vfio server-side modules share the wire-format modules
        ok = allowed | {own}
        for name in _imports(path, module):
            if not _within(name, ok):
                bad.append(f"{module} imports {name}")
    assert not bad, "\n".join(bad)


def test_every_module_starts_with_a_one_line_docstring():
    for path in SRC.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{path} has no module docstring"
        assert doc.splitlines()[0].strip(), path
