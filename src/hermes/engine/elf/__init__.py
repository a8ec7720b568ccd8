"""ELF loader for clang's BPF objects: read (``parse``), link to a Program (``link``), describe."""
from __future__ import annotations

from .describe import describe_elf
from .link import DEFAULT_MAX_SIZE, LinkInfo, default_helpers, load_elf
from .parse import ElfObject, Relocation, Section, Symbol

__all__ = ["DEFAULT_MAX_SIZE", "ElfObject", "LinkInfo", "Relocation", "Section", "Symbol",
           "default_helpers", "describe_elf", "load_elf"]
