"""The C example offloads: compiled with clang, run on the CPU engine and the emulated device,
checked against their Python references (examples/reference.py) on random inputs."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hermes
from hermes.cli import main
from hermes.cli.demo import build_examples, find_examples_dir, load_reference
from hermes.engine import engine_names, run
from hermes.engine.clang import find_clang
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


def _inputs(example, sizes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [example.make_input(rng, example.max_payload if n == "max" else n) for n in sizes]


def _check(example, data: bytes, r0: int, slot: bytes) -> None:
    want_r0, want_out = example.expected(data)
    assert r0 == want_r0, f"{example.name}: r0 {r0:#x}, expected {want_r0:#x} ({len(data)} B)"
    if want_out is not None:
        got = slot[:len(want_out)]
        diff = next((i for i, (a, b) in enumerate(zip(got, want_out)) if a != b), None)
        assert got == want_out, f"{example.name}: data slot differs at byte {diff}"


def test_reference_lists_the_required_examples() -> None:
    assert {"bytecount", "fnv1a", "crc32", "histogram", "grep", "filter", "stats"} <= set(NAMES)
    for e in REF.EXAMPLES:
        assert e.source.is_file(), e.source
        assert 0 < e.max_payload <= REF.SLOT_SIZE - REF.HDR_SIZE


@pytest.mark.parametrize("engine", engine_names())
@pytest.mark.parametrize("name", NAMES)
def test_example_on_cpu_engine(name: str, engine: str, objects: dict[str, Path]) -> None:
    example = REF.BY_NAME[name]
    program = load_elf(objects[name])
    assert program.elf_bytes == objects[name].read_bytes()
    for data in _inputs(example, SIZES, seed=sum(name.encode())):
        slot = bytearray(REF.SLOT_SIZE)  # the data slot: input at offset 0, zeros after
        slot[:len(data)] = data
        result = run(program, slot, engine=engine)
        _check(example, data, result.return_value, bytes(slot))


@pytest.mark.parametrize("name", NAMES)
def test_example_on_emulated_device(name: str, objects: dict[str, Path]) -> None:
    example = REF.BY_NAME[name]
    program = load_elf(objects[name])
    with hermes.open("emu") as device:
        for data in _inputs(example, DEVICE_SIZES, seed=7 + len(name)):
            _, want_out = example.expected(data)
            read = max(len(data), len(want_out or b""))
            result = device.run(program, data, read=read)
            _check(example, data, result.return_value, bytes(result.data))


@settings(max_examples=40)
@given(name=st.sampled_from(NAMES), size=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1),
       engine=st.sampled_from(engine_names()))
def test_examples_agree_with_reference(programs: dict, name: str, size: int, seed: int,
                                       engine: str) -> None:
    """The engines and the Python reference agree on any payload size and content."""
    example = REF.BY_NAME[name]
    data = example.make_input(random.Random(seed), size)
    slot = bytearray(REF.SLOT_SIZE)
    slot[:len(data)] = data
    result = run(programs[name], slot, engine=engine)
    _check(example, data, result.return_value, bytes(slot))


def test_examples_use_rodata_and_local_calls(objects: dict[str, Path]) -> None:
    crc = load_elf(objects["crc32"])
    assert any(not s.writable and len(s.data) >= 1024 for s in crc.segments)
    stats = load_elf(objects["stats"])
    assert any(i is not None and i.op.form == "call_local" for i in stats.insns)
    assert any(s.writable for s in stats.segments)  # the .bss call counter


def test_demo_command_passes(capsys) -> None:
    rc = main(["demo", "--sizes", "0,100,4096", "--only", "bytecount", "--only", "filter"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bytecount" in out and "filter" in out and "emu" in out and "cpu" in out
    assert "MISMATCH" not in out


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
