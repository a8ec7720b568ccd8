"""The benchmarks' baseline helper: the --base/--no-base options and child runs under a tree."""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from hermes.benchmarks import baseline
from hermes.benchmarks.baseline import (
    THIS_TREE,
    Child,
    ChildError,
    add_base_options,
    base_tree,
    run_child,
    run_child_json,
    tree_of,
)


def _tree(root: Path, marker: str = "fake") -> Path:
    """A stand-in checkout whose ``hermes`` package only says which tree it is."""
    (root / "src" / "hermes").mkdir(parents=True)
    (root / "src" / "hermes" / "__init__.py").write_text(f"TREE = {marker!r}\n")
    return root


def _parse(*args: str) -> Path | None:
    ap = argparse.ArgumentParser()
    add_base_options(ap)
    return base_tree(ap.parse_args(list(args)))


def test_this_tree_is_the_checkout_of_the_package() -> None:
    assert (THIS_TREE / "src" / "hermes" / "benchmarks" / "baseline.py").is_file()


def test_base_option_takes_a_checkout_or_its_src(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "old")
    assert _parse("--base", str(tree)) == tree.resolve()
    assert _parse("--base", str(tree / "src")) == tree.resolve()
    assert _parse("--baseline", str(tree / "src")) == tree.resolve()  # the earlier spelling
    assert tree_of(tree / "src") == tree.resolve()
    with pytest.raises(ValueError):
        tree_of(tmp_path)


def test_no_base_and_an_empty_base_mean_none(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "old")
    assert _parse("--no-base") is None
    assert _parse("--no-base", "--base", str(tree)) is None
    assert _parse("--no-baseline") is None
    assert _parse("--base", "") is None


def test_a_base_that_is_no_checkout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not a checkout"):
        _parse("--base", str(tmp_path))


def test_the_default_base_is_used_only_when_it_holds_a_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baseline, "DEFAULT_BASE", tmp_path / "base")
    assert _parse() is None
    tree = _tree(tmp_path / "base")
    assert _parse() == tree.resolve()
    monkeypatch.setattr(baseline, "DEFAULT_BASE", THIS_TREE)  # never this checkout itself
    assert _parse() is None


def test_a_child_imports_hermes_from_its_tree(tmp_path: Path) -> None:
    script = tmp_path / "which.py"
    script.write_text("import json, sys, hermes\n"
                      "print('noise')\n"
                      "print(json.dumps([hermes.__file__, sys.argv[1:]]))\n")
    where, args = run_child_json(THIS_TREE, script, ["a", "1"], timeout=60)
    assert Path(where).resolve() == (THIS_TREE / "src" / "hermes" / "__init__.py").resolve()
    assert args == ["a", "1"]
    other = _tree(tmp_path / "old", "old")
    code = tmp_path / "tree.py"
    code.write_text("import hermes\nprint(hermes.TREE)\n")
    assert run_child(other, code, [], timeout=60).strip() == "old"


def test_a_failing_child_reports_its_stderr(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text("import sys\nsys.exit('it broke')\n")
    with pytest.raises(ChildError, match="it broke"):
        run_child(THIS_TREE, script, [], timeout=60)


def test_every_wait_on_a_child_has_a_bound(tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text("import time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        run_child(THIS_TREE, script, [], timeout=0.5)
    child = Child(THIS_TREE, script, [], timeout=30)
    assert child.readline() == "ready"
    with pytest.raises(ChildError, match="in time"):
        child.readline(timeout=0.3)
    assert child.proc.poll() is not None  # killed


def test_a_long_running_child_answers_line_by_line(tmp_path: Path) -> None:
    script = tmp_path / "echo.py"
    script.write_text("import sys\nfor line in sys.stdin:\n"
                      "    print(line.strip().upper(), flush=True)\n")
    child = Child(THIS_TREE, script, [], timeout=30)
    assert [child.ask(w) for w in ("a", "bc")] == ["A", "BC"]
    assert child.close() == 0
    gone = Child(THIS_TREE, tmp_path / "missing.py", [], timeout=30)
    with pytest.raises(ChildError, match="exited"):
        gone.readline()
