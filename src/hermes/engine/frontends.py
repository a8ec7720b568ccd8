"""Program front ends together: a program file of any kind, and the ``Program.from_*`` spellings."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from .asm import assemble_program, source_text
from .disasm import disassemble_insns
from .program import Program

#: File name suffixes read as assembly source; other files that are not ELF are instruction bytes.
ASM_SUFFIXES = (".s", ".asm", ".S")


def read_program(path: str | os.PathLike[str], *, max_size: int | None = None) -> Program:
    """Load a program from a file: an ELF object (told by its magic; linked by ``load_elf`` with
    the default entry rule and ``max_size``), assembly (``ASM_SUFFIXES``) or raw instruction
    bytes. The program is named after the file unless ELF names its entry function."""
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"a program file is a path, not {type(path).__name__}")
    p = Path(path)
    data = p.read_bytes()
    if data[:4] == b"\x7fELF":
        # Imported here: pyelftools is paid for by programs that are ELF, not by every import.
        from .elf import load_elf
        return load_elf(data, max_size=max_size)
    if p.suffix in ASM_SUFFIXES:
        return assemble_program(source_text(data, p.name), name=p.name)
    return Program.from_bytes(data, name=p.name)


# --- the Program.from_* conveniences --------------------------------------------------------------
# ``Program.from_asm``, ``from_elf``, ``from_file`` and ``program.disasm()`` are the spellings of
# the public API (README, specs/library.md). The value type cannot define them without importing
# its own front ends (the cycle program -> elf -> program), so they are attached here, above
# every front end; each is the front-end function under its documented name.
def _from_asm(cls: type[Program], text: str | bytes, *, name: str | None = None) -> Program:
    """Assemble ``text`` into a program: ``asm.assemble_program``."""
    return assemble_program(text, name=name)


def _from_elf(cls: type[Program], source: str | Path | bytes,
              section: str | None = None, function: str | None = None, *,
              max_size: int | None = None, entry_symbol: int = 0) -> Program:
    """Link a program out of a BPF ELF object (path or bytes): ``elf.load_elf``."""
    from .elf import load_elf
    return load_elf(source, section=section, function=function, max_size=max_size,
                    entry_symbol=entry_symbol)


def _from_file(cls: type[Program], path: str | os.PathLike[str], *,
               max_size: int | None = None) -> Program:
    """Load a program from an ELF, assembly or raw file: ``read_program``."""
    return read_program(path, max_size=max_size)


def _disasm(self: Program) -> str:
    """Disassembly, one instruction a line, in assembler syntax: ``disasm.disassemble_insns``."""
    return disassemble_insns(self.insns)


for _name, _method in (("from_asm", classmethod(_from_asm)), ("from_elf", classmethod(_from_elf)),
                       ("from_file", classmethod(_from_file)), ("disasm", _disasm)):
    setattr(Program, _name, _method)
