"""The differential fuzzer's work split: every job gets programs, each program is checked once."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "fuzz" / "jit_diff.py"
_spec = importlib.util.spec_from_file_location("jit_diff", _PATH)
assert _spec is not None and _spec.loader is not None
jit_diff = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(jit_diff)


@pytest.mark.parametrize("count, chunk, jobs", [
    (1, 5000, 2), (200, 5000, 2), (10_001, 5000, 2), (999, 100, 3), (7, 5000, 0), (5, 2, 8)])
def test_chunks_cover_the_count_and_give_every_job_work(count, chunk, jobs):
    work = jit_diff.chunks(9, count, chunk, jobs, 200, 24, "mixed")
    sizes = [w[1] for w in work]
    assert sum(sizes) == count and all(0 < s <= chunk for s in sizes)
    assert len(work) >= min(count, max(1, jobs))
    assert len({w[0] for w in work}) == len(work)  # a seed of its own per chunk


def test_a_range_runs_on_the_three_engines_without_differences():
    done, rejected, diffs = jit_diff.run_range((4, 6, 4, 12, "mixed"))
    assert (done, rejected, diffs) == (6, 0, [])
