"""The C example offloads and the public header: compiled with clang, run on the engines, the CPU
backend and the emulated device on the run contract, checked against their Python references
(examples/reference.py) on random inputs."""
from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import hermes
from hermes.cli import main
from hermes.cli.demo import build_examples, find_examples_dir, load_reference, run_on
from hermes.engine import executor_names
from hermes.engine.clang import find_clang, include_dir
from hermes.engine.elf import load_elf

pytestmark = pytest.mark.skipif(find_clang() is None,
                                reason="clang not found: apt-get install clang")

REF = load_reference(find_examples_dir())
NAMES = [e.name for e in REF.EXAMPLES]
#: Small and odd sizes on every path; the full slot once per example and path.
SIZES = (0, 1, 7, 100, 4093, 65536, "max")
DEVICE_SIZES = (0, 100, 4096, "max")


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> dict[str, Path]:
    """Every example compiled once for the module."""
    return build_examples(REF, tmp_path_factory.mktemp("examples"))


@pytest.fixture(scope="module")
def programs(objects: dict[str, Path]) -> dict:
    """Every example loaded once for the module."""
    return {name: load_elf(path) for name, path in objects.items()}


def _cases(example, sizes, seed: int) -> list:
    rng = random.Random(seed)
    return [example.make_case(rng, example.max_input if n == "max" else n) for n in sizes]


def _check(example, case, r0: int, out: bytes) -> None:
    want_r0, want_out = example.expected(case)
    n = len(case.data)
    assert r0 == want_r0, f"{example.name}: r0 {r0:#x}, expected {want_r0:#x} ({n} B)"
    diff = next((i for i, (a, b) in enumerate(zip(out, want_out, strict=False)) if a != b), None)
    assert out == want_out, (f"{example.name}: output differs at byte {diff} ({len(out)} bytes, "
                             f"expected {len(want_out)}; input {n} B)")


def test_reference_lists_the_required_examples() -> None:
    assert {"bytecount", "newlines", "fnv1a", "crc32", "histogram", "grep", "filter",
            "stats"} <= set(NAMES)
    for e in REF.EXAMPLES:
        assert e.source.is_file(), e.source
        assert 0 < e.max_input <= REF.SLOT_SIZE
        case = e.make_case(random.Random(1), e.max_input)
        assert max(len(case.data), case.size or 0) <= REF.SLOT_SIZE, e.name


def test_examples_use_only_the_public_header() -> None:
    """No private convention: every example includes hermes.h and takes the contract's entry."""
    folder = find_examples_dir()
    assert not (folder / "hermes_example.h").exists()
    for e in REF.EXAMPLES:
        text = e.source.read_text()
        assert re.findall(r'#include\s+[<"]([^>"]+)[>"]', text) == ["hermes.h"], e.name
        assert f"HERMES_ENTRY({e.name})" in text, e.name


def test_header_is_package_data_and_cflags_prints_it() -> None:
    header = resources.files("hermes") / "include" / "hermes.h"
    assert header.is_file()
    assert Path(str(header)).resolve() == (include_dir() / "hermes.h").resolve()
    for cmd in (["-m", "hermes", "cflags"], ["-m", "hermes.cli", "cflags"]):
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout == f"-I{include_dir()}\n", r.stderr


def test_readme_compile_line_builds_an_example(tmp_path: Path) -> None:
    """The README's command line (clang -target bpf -O2 -mcpu=v3 -I...) builds a runnable object."""
    obj = tmp_path / "newlines.o"
    subprocess.run([find_clang(), "-target", "bpf", "-O2", "-mcpu=v3", f"-I{include_dir()}",
                    "-c", str(find_examples_dir() / "newlines.c"), "-o", str(obj)], check=True,
                   timeout=120)
    with hermes.open("cpu") as dev:
        assert dev.run(load_elf(obj), b"a\nb\n\n").return_value == 3


@pytest.mark.parametrize("engine", executor_names())
@pytest.mark.parametrize("name", NAMES)
def test_example_on_each_engine(name: str, engine: str, objects: dict[str, Path]) -> None:
    example = REF.BY_NAME[name]
    program = load_elf(objects[name])
    assert program.elf_bytes == objects[name].read_bytes()
    for case in _cases(example, SIZES, seed=sum(name.encode())):
        r0, out = run_on(None, program, case, executor=engine)
        _check(example, case, r0, out)


@pytest.mark.parametrize("spec", ["emu", "cpu"])
@pytest.mark.parametrize("name", NAMES)
def test_example_on_a_device(name: str, spec: str, objects: dict[str, Path]) -> None:
    example = REF.BY_NAME[name]
    program = load_elf(objects[name])
    with hermes.open(spec) as device:
        for case in _cases(example, DEVICE_SIZES, seed=7 + len(name)):
            r0, out = run_on(device, program, case)
            _check(example, case, r0, out)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(NAMES), size=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1),
       engine=st.sampled_from(executor_names()))
def test_examples_agree_with_reference(programs: dict, name: str, size: int, seed: int,
                                       engine: str) -> None:
    """The engines and the Python reference agree on any input size and content."""
    example = REF.BY_NAME[name]
    case = example.make_case(random.Random(seed), size)
    r0, out = run_on(None, programs[name], case, executor=engine)
    _check(example, case, r0, out)


def test_examples_use_rodata_and_local_calls(objects: dict[str, Path]) -> None:
    crc = load_elf(objects["crc32"])
    assert any(not s.writable and len(s.data) >= 1024 for s in crc.segments)
    stats = load_elf(objects["stats"])
    assert any(i is not None and i.op.form == "call_local" for i in stats.insns)
    assert any(s.writable for s in stats.segments)  # the .bss call counter


@pytest.mark.parametrize("spec", ["emu", "cpu"])
def test_stats_prints_with_hermes_printk(spec: str, objects: dict[str, Path]) -> None:
    words = bytes(range(1, 9))  # u32 words 0x04030201, 0x08070605
    with hermes.open(spec) as dev:
        program = load_elf(objects["stats"])
        quiet = dev.run(program, words, size=40)
        loud = dev.run(program, words, args=(1,), size=40)
    assert quiet.trace == ""
    assert loud.trace == (f"stats: 2 words, sum {0x04030201 + 0x08070605}\n"
                          f"stats: min {0x04030201}, max {0x08070605}\n")
    assert loud.data == quiet.data


@pytest.mark.parametrize("spec", ["emu", "cpu"])
def test_crc32_pieces_chain_through_arg0(spec: str, objects: dict[str, Path]) -> None:
    """A stream's CRC from its pieces, each run continuing the previous piece's r0."""
    import zlib
    data = random.Random(5).randbytes(10_000)
    with hermes.open(spec) as dev:
        program = load_elf(objects["crc32"])
        crc = 0
        for offset in range(0, len(data), 4096):
            crc = dev.run(program, data[offset:offset + 4096], args=(crc,)).return_value
    assert crc == zlib.crc32(data)


def test_demo_command_passes(capsys) -> None:
    rc = main(["demo", "--sizes", "0,100,4096", "--only", "bytecount", "--only", "filter",
               "--only", "histogram"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bytecount" in out and "filter" in out and "emu" in out and "cpu" in out
    assert "MISMATCH" not in out and "ERROR" not in out


def test_demo_reports_mismatch(tmp_path: Path, capsys) -> None:
    src = find_examples_dir()
    for f in src.iterdir():
        if f.suffix in (".c", ".h", ".py"):
            shutil.copy(f, tmp_path / f.name)
    ref = tmp_path / "reference.py"
    text = ref.read_text()
    assert "h = 0xCBF29CE484222325" in text
    ref.write_text(text.replace("h = 0xCBF29CE484222325", "h = 0xCBF29CE484222324"))
    rc = main(["demo", "--examples", str(tmp_path), "--sizes", "10", "--only", "fnv1a",
               "--backend", "cpu"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "MISMATCH" in out
