"""The whole shared conformance corpus passes on the reference interpreter."""
from __future__ import annotations

import subprocess
import sys

import pytest

from hermes.conformance import load_corpus, run_case

from .conftest import CONFORMANCE

CASES = load_corpus([CONFORMANCE]) if CONFORMANCE else []


@pytest.mark.parametrize("case", CASES, ids=[str(c.path.relative_to(CONFORMANCE)) for c in CASES])
def test_case_on_interpreter(case):
    outcome = run_case(case, executor="interp")
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.passed, outcome.detail


def test_corpus_is_present_and_large():
    assert len(CASES) > 250


def test_cli_summary_line(conformance_dir):
    out = subprocess.run([sys.executable, "-m", "hermes.cli", "conformance", "-q",
                          str(conformance_dir / "bpf_conformance")],
                         capture_output=True, text=True, check=True)
    last = out.stdout.strip().splitlines()[-1]
    assert last.endswith(" passed, 0 failed")


def test_plugin_protocol():
    # mov r0, r2 ; exit with 4 bytes of memory -> prints 4
    prog = "bf20000000000000" "9500000000000000"
    out = subprocess.run([sys.executable, "-m", "hermes.cli", "conformance-plugin", "01020304"],
                         input=prog, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "4"
    bad = subprocess.run([sys.executable, "-m", "hermes.cli", "conformance-plugin"],
                         input="ff00000000000000", capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown opcode" in bad.stderr
