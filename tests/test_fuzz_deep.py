"""Differential fuzzing of calls at depth: interpreter, JIT quick tier and JIT full tier agree."""
from __future__ import annotations

import collections
import random
import subprocess
import sys
from pathlib import Path

from hermes.engine.helpers import CONFORMANCE_HELPERS
from hermes.engine.interp import Interpreter
from hermes.engine.jit import JitExecutable
from hermes.engine.verifier import verify
from tests.volume import examples

from .support.progen import compare_all, deep_case, outcome

BUDGET = 10**9
ROOT = Path(__file__).resolve().parents[1]
#: Programs per run of the default suite (seconds); HERMES_DEEP_DIFF sets another count.
COUNT = examples("HERMES_DEEP_DIFF", 60, 2000)


def test_deep_programs_agree_on_every_engine():
    rng = random.Random(20261201)
    cases = [deep_case(rng) for _ in range(COUNT)]
    programs = [c.program() for c in cases]
    tiers = {tier: JitExecutable.load_many(programs, helpers=CONFORMANCE_HELPERS, budget=BUDGET,
                                           tier=tier) for tier in ("quick", "full")}
    kinds: collections.Counter = collections.Counter()
    diffs = []
    for k, (case, program) in enumerate(zip(cases, programs, strict=True)):
        exes = {"interp": Interpreter(program, helpers=CONFORMANCE_HELPERS, budget=BUDGET),
                "jit-quick": tiers["quick"][k], "jit-full": tiers["full"][k]}
        d = compare_all(case, exes)
        if d:
            diffs.append(d)
        res = outcome(exes["interp"], case)
        kinds[res[0] if res[0] == "ok" else res[2]] += 1
    assert not diffs, "\n\n".join(diffs[:3])
    # the generator reaches every way a deep run can end
    assert {"ok", "call_depth", "budget", "out_of_bounds"} <= set(kinds), kinds
    assert kinds["ok"] > COUNT // 4, kinds


def test_deep_programs_hold_what_the_analyses_must_get_right():
    """Recursive entry functions, calls the call graph leaves out, unbounded call graphs."""
    rng = random.Random(5)
    seen = collections.Counter()
    for _ in range(200):
        case = deep_case(rng)
        program = case.program()
        info = verify(program, CONFORMANCE_HELPERS)
        seen["entry re-entered"] += "call local start" in case.text
        seen["unbounded"] += not info.bounded
        seen["call outside the proven graph"] += any(pc not in info.reachable
                                                     for pc in info.call_targets)
    assert all(seen[k] >= 10 for k in ("entry re-entered", "unbounded",
                                       "call outside the proven graph")), seen


def test_fuzzer_script_runs_every_engine():
    out = subprocess.run([sys.executable, str(ROOT / "fuzz" / "jit_diff.py"), "--count", "40",
                          "--kind", "mixed", "--jobs", "0", "--seed", "11", "--batch", "20"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "engines reference + interp + JIT quick + full" in out.stdout
    assert "ran 40 programs (mixed) with seed 11: 0 differences" in out.stdout
