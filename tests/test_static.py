"""Static checks: ruff and mypy clean, public functions documented and typed, py.typed shipped."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

import hermes

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "hermes"


def _tool(module: str) -> list[str]:
    """The command line running the tool `module` with this interpreter, or skip the test."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test]' installs it)")
    return [sys.executable, "-m", module]


def _run(command: list[str], timeout: float) -> None:
    """Runs a checker in the repository root; a finding fails the test with the tool's report."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command[2:])} reports:\n{done.stdout}{done.stderr}"


def test_ruff_clean() -> None:
    # The rule set and the folders it covers live in pyproject.toml ([tool.ruff]).
    _run(_tool("ruff") + ["check", "--no-cache", "--output-format", "concise", "."], timeout=120)


def test_mypy_clean() -> None:
    # Files, strictness and the untyped third-party modules live in pyproject.toml ([tool.mypy]);
    # the incremental cache sits in the gitignored .mypy_cache of the repository.
    _run(_tool("mypy"), timeout=600)


def test_installed_package_has_py_typed() -> None:
    # PEP 561: without the marker, type checkers treat an installed hermes as untyped; a wheel
    # carries it only when it is package data.
    assert resources.files(hermes).joinpath("py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["hermes"]


Function = ast.FunctionDef | ast.AsyncFunctionDef


def _public_functions(tree: ast.Module) -> Iterator[tuple[Function, ast.ClassDef | None]]:
    """Module-level functions and methods of module-level classes, names not starting with _."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not node.name.startswith("_"):
                yield node, None
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for sub in node.body:
                if (isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and not sub.name.startswith("_")):
                    yield sub, node


def _gaps(path: Path) -> Iterator[str]:
    """What the public functions of one module lack: a docstring, or an annotation."""
    for fn, cls in _public_functions(ast.parse(path.read_text())):
        decorators = {ast.unparse(d) for d in fn.decorator_list}
        # a property's setter and an overload's variants share the documented definition
        if "overload" in decorators or any(d.endswith(".setter") for d in decorators):
            continue
        where = f"{path.relative_to(ROOT)}:{fn.lineno} {cls.name + '.' if cls else ''}{fn.name}"
        if ast.get_docstring(fn) is None:
            yield f"{where}: no docstring"
        params = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        if cls is not None and params and "staticmethod" not in decorators:
            params = params[1:]  # self or cls
        params += [p for p in (fn.args.vararg, fn.args.kwarg) if p is not None]
        missing = [p.arg for p in params if p.annotation is None]
        if fn.returns is None:
            missing.append("return")
        if missing:
            yield f"{where}: not annotated: {', '.join(missing)}"


def test_public_functions_have_docstrings_and_annotations() -> None:
    gaps = [gap for path in sorted(SRC.rglob("*.py")) for gap in _gaps(path)]
    assert not gaps, "\n".join(gaps)
