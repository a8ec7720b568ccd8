"""The corpus's `-- pyelf` tests: template object built with pyelftools, mutated, then loaded."""
from __future__ import annotations

from pathlib import Path

import pytest

from hermes.conformance_pyelf import build_pyelf_object, template
from hermes.engine import CONFORMANCE_HELPERS, run
from hermes.engine.elf import load_elf
from hermes.errors import ElfError

from .conftest import CONFORMANCE

ELF_DIR = CONFORMANCE / "ubpf" / "elf" if CONFORMANCE is not None else None
CASES = sorted(ELF_DIR.glob("*.data")) if ELF_DIR is not None else []


def _sections(path: Path) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    cur = None
    for line in path.read_text().splitlines():
        if line.startswith("-- "):
            cur = line[3:].strip()
            out[cur] = []
        elif cur is not None and not line.lstrip().startswith("#"):
            out[cur].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def test_corpus_is_there() -> None:
    assert len(CASES) >= 21, f"expected the ubpf/elf corpus under {ELF_DIR}"


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_pyelf_case(path: Path) -> None:
    sec = _sections(path)
    blob = build_pyelf_object(sec["pyelf"])
    if "result" in sec:
        prog = load_elf(blob)
        assert prog.elf_bytes == blob
        assert run(prog, helpers=CONFORMANCE_HELPERS).return_value == int(sec["result"], 16)
    else:
        with pytest.raises(ElfError) as info:
            load_elf(blob, helpers=CONFORMANCE_HELPERS)
        assert len(str(info.value).splitlines()) == 1


def test_template_parts_and_layout() -> None:
    parts = template()
    assert parts["order"][0] == "ehdr"
    blob = build_pyelf_object("")
    assert len(blob) == 64 + 5 * 64 + 24 + 34 + 48 + 16
    assert blob[:4] == b"\x7fELF"


def test_both_machines_accepted() -> None:
    for machine in ("'EM_NONE'", "'EM_BPF'", "247", "0"):
        prog = load_elf(build_pyelf_object(f"ehdr.e_machine = {machine}"))
        assert run(prog, helpers=CONFORMANCE_HELPERS).return_value == 42


def test_call_relocation_type_10_accepted() -> None:
    prog = load_elf(build_pyelf_object("sqrti_rel.r_info = (1 << 32) | 10"))
    assert run(prog, helpers=CONFORMANCE_HELPERS).return_value == 42


def test_statements_have_no_builtins() -> None:
    with pytest.raises(ValueError, match="NameError"):
        build_pyelf_object("open('/etc/passwd')")
