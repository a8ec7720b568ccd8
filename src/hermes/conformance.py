"""Runs eBPF conformance corpora (``.data`` files of uBPF and bpf_conformance) on Hermes engines."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import engine as _engine
from .engine.asm import assemble_program
from .engine.helpers import CONFORMANCE_HELPERS
from .engine.program import Program
from .errors import ExecutionError, HermesError, ProgramError


@dataclass
class Case:
    """One ``.data`` test: its program source, input memory and expectation."""

    name: str
    path: Path
    asm: str | None = None
    raw: bytes | None = None
    pyelf: str | None = None
    memory: bytes | None = None
    result: int | None = None
    error: str | None = None
    no_jit: str | None = None
    events: list[str] = field(default_factory=list)

    @property
    def expect_error(self) -> bool:
        """True when the test expects a load or run-time error."""
        return self.error is not None

    def program(self) -> Program:
        """Build the test's program (raises ``ProgramError`` when it must not load)."""
        if self.pyelf is not None:
            from .conformance_pyelf import build_pyelf_object
            from .engine.elf import load_elf
            return load_elf(build_pyelf_object(self.pyelf), helpers=CONFORMANCE_HELPERS)
        if self.raw is not None:
            return Program.from_bytes(self.raw, name=self.name)
        return assemble_program(self.asm or "", name=self.name)


def _strip(line: str) -> str:
    return line.split("#", 1)[0].strip()


def parse_case(path: Path) -> Case:
    """Parse one ``.data`` file (see the corpus README for the format)."""
    case = Case(name=str(path), path=path)
    sections: list[tuple[str, list[str]]] = []
    for line in path.read_text().splitlines():
        if line.startswith("-- "):
            sections.append((line[3:].strip(), []))
        elif sections:
            sections[-1][1].append(line)
    for header, body in sections:
        name, _, arg = header.partition(" ")
        arg = arg.strip()
        if name == "asm":
            if arg.startswith("@"):
                case.asm = (path.parent / arg[1:].strip()).read_text()
            else:
                case.asm = "\n".join(body)
        elif name == "raw":
            words = [_strip(x) for x in body if _strip(x)]
            case.raw = b"".join(int(w, 16).to_bytes(8, "little") for w in words)
        elif name == "mem":
            text = (path.parent / arg[1:].strip()).read_text() if arg.startswith("@") else \
                "\n".join(_strip(x) for x in body)
            # tcpdump-style dumps prefix lines with "0x0010:" and group bytes in pairs
            case.memory = b"".join(bytes.fromhex(t) for t in text.split()
                                   if not t.endswith(":"))
        elif name == "result":
            words = [_strip(x) for x in body if _strip(x)]
            if words:
                case.result = int(words[0], 16)
        elif name == "error":
            case.error = "\n".join(x for x in body if x.strip()).strip() or "error"
        elif name == "no":
            if arg == "jit":
                case.no_jit = " ".join(x.strip() for x in body if x.strip()) or "no jit"
        elif name in ("unload", "reload"):
            case.events.append(name)
        elif name == "pyelf":
            case.pyelf = "\n".join(body)
    return case


def load_corpus(paths: list[str | Path]) -> list[Case]:
    """Every ``.data`` case under ``paths`` (files or directories), sorted by path."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.data")) if p.is_dir() else [p])
    return [parse_case(f) for f in files]


@dataclass
class Outcome:
    """Result of running one case: ``passed`` plus what happened, for the report line."""

    case: Case
    passed: bool
    detail: str
    skipped: str | None = None


class _Vm:
    """The load/unload life cycle the corpus's ``-- unload``/``-- reload`` sections test."""

    def __init__(self, executor: str | None):
        self.executor = executor
        self.loaded: _engine.Executable | None = None

    def load(self, program: Program) -> _engine.Executable:
        """Load ``program`` (refused while one is loaded); returns its executable."""
        if self.loaded is not None:
            raise ProgramError("a program is already loaded; unload it first")
        self.loaded = _engine.load(program, helpers=CONFORMANCE_HELPERS, executor=self.executor)
        return self.loaded

    def unload(self) -> None:
        self.loaded = None


def run_case(case: Case, executor: str | None = None, *, engine: str | None = None) -> Outcome:
    """Run ``case`` on ``executor`` (``interp``, ``jit``; ``engine=`` is its deprecated
    spelling) and compare with its expectation."""
    executor = _engine.executor_option(executor, engine)
    if case.asm is not None and case.raw is not None:
        return _check_encoding(case)
    vm = _Vm(executor)
    try:
        program = case.program()
    except ProgramError as exc:
        return _expect_error(case, f"load error: {exc}")
    try:
        exe = vm.load(program)
        for event in case.events:
            if event == "unload":
                vm.unload()
            exe = vm.load(program)
        memory = bytearray(case.memory) if case.memory is not None else None
        result = exe.run(memory)
    except ProgramError as exc:
        return _expect_error(case, f"load error: {exc}")
    except ExecutionError as exc:
        return _expect_error(case, f"run-time error: {exc}")
    except HermesError as exc:
        return _expect_error(case, f"error: {exc}")
    if case.error is not None:
        return Outcome(case, False, f"expected an error ({case.error.splitlines()[0]}), "
                                    f"got r0={result.return_value:#x}")
    if case.result is None:
        return Outcome(case, True, f"r0={result.return_value:#x} (no expected value)")
    ok = result.return_value == case.result
    return Outcome(case, ok, f"r0={result.return_value:#x}" +
                   ("" if ok else f", expected {case.result:#x}"))


def _check_encoding(case: Case) -> Outcome:
    """Cases with both ``-- asm`` and ``-- raw`` test the assembler: the bytes must match."""
    from .engine.asm import assemble
    try:
        code = assemble(case.asm or "")
    except ProgramError as exc:
        return _expect_error(case, f"assembler error: {exc}")
    raw = case.raw or b""
    if code == raw:
        return Outcome(case, True, f"assembles to the expected {len(code) // 8} instructions")
    for i in range(0, max(len(code), len(raw)), 8):
        if code[i:i + 8] != raw[i:i + 8]:
            return Outcome(case, False, f"instruction {i // 8} assembles to "
                                        f"{code[i:i + 8].hex()} instead of {raw[i:i + 8].hex()}")
    return Outcome(case, False, "encoding differs")  # pragma: no cover


def expected_kind(case: Case) -> str | None:
    """``"load"`` or ``"run-time"`` from the wording of the VM that wrote an error test."""
    if case.error is None:
        return None
    if case.error.startswith("Failed to load code") or case.pyelf is not None:
        return "load"
    if case.error.startswith("uBPF error"):
        return "run-time"
    return None


def _expect_error(case: Case, what: str) -> Outcome:
    if not case.expect_error:
        return Outcome(case, False, f"unexpected {what}")
    kind = expected_kind(case)
    got = "load" if what.startswith(("load", "assembler")) else "run-time"
    if kind is not None and kind != got:
        return Outcome(case, False, f"expected a {kind} error, got {what}")
    return Outcome(case, True, what)


def run_corpus(paths: list[str | Path], executor: str | None = None, *,
               engine: str | None = None) -> list[Outcome]:
    """Run every case under ``paths`` (``executor`` as in ``run_case``)."""
    executor = _engine.executor_option(executor, engine)
    return [run_case(c, executor) for c in load_corpus(paths)]


_HEX = re.compile(r"[0-9a-fA-F\s]*$")


def plugin_main(program_hex: str, memory_hex: str, executor: str | None = None, *,
                engine: str | None = None) -> tuple[int, str]:
    """bpf_conformance plugin protocol: returns (exit status, output line); ``executor`` as in
    ``run_case``."""
    executor = _engine.executor_option(executor, engine)
    if not _HEX.match(program_hex) or not _HEX.match(memory_hex or ""):
        return 1, "invalid hex input"
    try:
        program = Program.from_bytes(bytes.fromhex("".join(program_hex.split())))
        memory = bytearray(bytes.fromhex("".join(memory_hex.split()))) if memory_hex else None
        result = _engine.run(program, memory, helpers=CONFORMANCE_HELPERS, executor=executor)
    except HermesError as exc:
        return 1, str(exc)
    return 0, f"{result.return_value:x}"
