"""Which clang Hermes compiles with, and C programs that need -mcpu=v4 (signed / and %)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hermes.engine import DEFAULT_BUDGET, DEVICE_HELPERS
from hermes.engine.clang import V4_MIN_VERSION, clang_version, compile_c, find_clang, supports_v4
from hermes.engine.elf import load_elf
from hermes.engine.interp import Interpreter
from hermes.engine.jit import JitExecutable
from hermes.engine.reference import Reference


def fake_clang(folder: Path, name: str, version: int) -> Path:
    """An executable that answers ``--version`` as clang ``version`` does."""
    path = folder / name
    path.write_text(f"#!/bin/sh\necho 'Debian clang version {version}.0.1'\n"
                    "echo 'Target: x86_64-pc-linux-gnu'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def path_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put only ``tmp_path`` on PATH; returns a function naming the clang found there."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("HERMES_CLANG", raising=False)

    def found() -> str | None:
        clang_version.cache_clear()
        path = find_clang()
        return Path(path).name if path else None
    yield found
    clang_version.cache_clear()


def test_clang_19_is_preferred_even_over_newer(tmp_path: Path, path_of):
    fake_clang(tmp_path, "clang", 14)
    fake_clang(tmp_path, "clang-20", 20)
    fake_clang(tmp_path, "clang-19", 19)
    assert path_of() == "clang-19"


def test_else_the_newest_clang(tmp_path: Path, path_of):
    fake_clang(tmp_path, "clang-16", 16)
    fake_clang(tmp_path, "clang", 18)  # plain clang is compared by the version it reports
    assert path_of() == "clang"
    fake_clang(tmp_path, "clang-17", 17)
    assert path_of() == "clang"
    fake_clang(tmp_path, "clang", 14)
    assert path_of() == "clang-17"


def test_environment_and_absence(tmp_path: Path, path_of, monkeypatch: pytest.MonkeyPatch):
    assert path_of() is None
    other = fake_clang(tmp_path, "my-clang", 12)
    monkeypatch.setenv("HERMES_CLANG", str(other))
    assert path_of() == "my-clang"
    assert not supports_v4(str(other))


def test_v4_needs_clang_18():
    assert V4_MIN_VERSION == 18


SIGNED = r"""
#include "hermes.h"

/* Signed division and modulo of the arguments: -mcpu=v4 emits sdiv/smod (older levels reject
 * them; clang 14 crashes on the modulo). */
HERMES_ENTRY(entry)
{
    s64 a = (s64)arg0, b = (s64)arg1;
    return (u64)(a % b * 1000 + (s32)a / (s32)b);
}
"""


def c_semantics(a: int, b: int) -> int:
    """What C gives: division truncates toward zero, the remainder has the dividend's sign."""
    def div(x: int, y: int) -> int:
        q = abs(x) // abs(y)
        return q if (x < 0) == (y < 0) else -q
    return ((a - b * div(a, b)) * 1000 + div(a, b)) & ((1 << 64) - 1)


@pytest.mark.skipif(not supports_v4(), reason=f"no clang {V4_MIN_VERSION}+ (for -mcpu=v4) on "
                    "PATH; ./dev setup installs clang-19")
def test_signed_division_compiled_for_v4_runs_on_every_engine(tmp_path: Path):
    src = tmp_path / "signed.c"
    src.write_text(SIGNED)
    obj = compile_c(src, tmp_path / "signed.o", extra_flags=["-mcpu=v4"])
    program = load_elf(obj)
    mnemonics = {i.op.mnemonic for i in program.insns if i is not None}
    assert {"sdiv32", "smod"} <= mnemonics, mnemonics
    engines = [cls(program, helpers=DEVICE_HELPERS, budget=DEFAULT_BUDGET)
               for cls in (Interpreter, Reference, JitExecutable)]
    for a, b in ((17, 5), (-17, 5), (17, -5), (-17, -5), (7, 7), (-1, 3), (5, 0)):
        if b == 0:
            continue  # C leaves it undefined; the ISA's x/0 = 0 is tested in test_reference
        want = c_semantics(a, b)
        for exe in engines:
            got = exe.run(bytearray(1), args=(a, b)).return_value
            assert got == want, (type(exe).__name__, a, b, got, want)


def test_default_clang_is_preferred_one_here():
    """On a machine set up by ./dev setup, the compiler in use is clang-19."""
    path = find_clang()
    if path is None or not os.path.exists("/usr/bin/clang-19"):
        pytest.skip("clang-19 is not installed here (./dev setup installs it)")
    assert clang_version(path) == 19
