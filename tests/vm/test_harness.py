"""Host-side checks of the VM harness (vm/harness.py): cache key, guest requirements, skips."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "vm" / "harness.py"


@pytest.fixture
def harness():
    spec = importlib.util.spec_from_file_location("vm_harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guest_requirements_are_the_dependencies_and_the_test_tools(harness):
    reqs = harness.guest_requirements()
    names = {r.split(">")[0].split("=")[0].split("<")[0] for r in reqs}
    assert {"pyelftools", "llvmlite", "pytest", "hypothesis"} <= names
    assert not names & {"pytest-xdist", "amaranth"}   # not used in the guest


def test_cache_key_follows_the_recipe(harness, tmp_path, monkeypatch):
    recipe = tmp_path / "build-root.sh"
    recipe.write_text("echo one\n")
    monkeypatch.setattr(harness, "RECIPE", [recipe])
    first = harness.cache_key()
    assert harness.cache_key() == first
    recipe.write_text("echo two\n")
    assert harness.cache_key() != first


def test_not_root_skips_with_one_line(harness, monkeypatch, capsys):
    monkeypatch.setattr(harness.os, "geteuid", lambda: 1000)
    assert harness.main(["test"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("vm: skipped: not root") and out.count("\n") == 1


def test_unknown_job_is_named(harness, tmp_path):
    with pytest.raises(harness.VmError, match="no job 'nope'"):
        harness.job_script("nope")
