"""Builds the template ELF object of the conformance corpus's ``-- pyelf`` tests and mutates it."""
from __future__ import annotations

from elftools.construct import Container
from elftools.elf.constants import SH_FLAGS
from elftools.elf.structs import ELFStructs

from .engine import isa

# Layout of the template (offsets in bytes): ELF header, five section headers, then the contents.
_TEXT_OFF = 64 + 5 * 64
_TEXT_SIZE = 3 * 8
_STRTAB = b"\0.text\0.strtab\0.symtab\0.rel\0sqrti\0"
_STRTAB_OFF = _TEXT_OFF + _TEXT_SIZE
_SYMTAB_OFF = _STRTAB_OFF + len(_STRTAB)
_SYMTAB_SIZE = 2 * 24
_REL_OFF = _SYMTAB_OFF + _SYMTAB_SIZE

#: Order the parts are written in when no test statement changes ``order``.
DEFAULT_ORDER = ("ehdr", "first_shdr", "text_shdr", "strtab_shdr", "symtab_shdr", "rel_shdr",
                 "text", "strtab", "first_sym", "sqrti_sym", "sqrti_rel")


def _shdr(name: int, sh_type: str, flags: int, offset: int, size: int, link: int = 0,
          info: int = 0, align: int = 0, entsize: int = 0) -> Container:
    return Container(sh_name=name, sh_type=sh_type, sh_flags=flags, sh_addr=0, sh_offset=offset,
                     sh_size=size, sh_link=link, sh_info=info, sh_addralign=align,
                     sh_entsize=entsize)


def _sym(name: int) -> Container:
    return Container(st_name=name, st_value=0, st_size=0,
                     st_info=Container(bind="STB_WEAK", type="STT_FUNC"),
                     st_other=Container(local=0, visibility="STV_DEFAULT"), st_shndx=0)


def template() -> dict:
    """The template's parts, by name, plus ``order`` (the list of part names to serialize).

    The program is ``mov %r1, 1764; call -1; exit`` with the call relocated (type 2, as the corpus
    writes it) against the weak undefined function ``sqrti``: loaded, it returns 42.
    """
    text = (isa.encode_slot(isa.CLS_ALU64 | isa.ALU_MOV | isa.SRC_K, 1, 0, 0, 1764)
            + isa.encode_slot(isa.CLS_JMP | isa.JMP_CALL | isa.SRC_K, 0, 0, 0, -1)
            + isa.encode_slot(isa.CLS_JMP | isa.JMP_EXIT, 0, 0, 0, 0))
    parts = {
        "ehdr": Container(
            e_ident=Container(EI_MAG=[0x7F, ord("E"), ord("L"), ord("F")], EI_CLASS="ELFCLASS64",
                              EI_DATA="ELFDATA2LSB", EI_VERSION="EV_CURRENT",
                              EI_OSABI="ELFOSABI_SYSV", EI_ABIVERSION=0),
            e_type="ET_REL", e_machine="EM_NONE", e_version=0, e_entry=0, e_phoff=0, e_shoff=64,
            e_flags=0, e_ehsize=64, e_phentsize=0, e_phnum=0, e_shentsize=64, e_shnum=5,
            e_shstrndx=2),
        "first_shdr": _shdr(0, "SHT_NULL", 0, 0, 0),
        "text_shdr": _shdr(1, "SHT_PROGBITS", SH_FLAGS.SHF_ALLOC | SH_FLAGS.SHF_EXECINSTR,
                           _TEXT_OFF, _TEXT_SIZE, align=8),
        "strtab_shdr": _shdr(7, "SHT_STRTAB", 0, _STRTAB_OFF, len(_STRTAB), align=1),
        "symtab_shdr": _shdr(15, "SHT_SYMTAB", 0, _SYMTAB_OFF, _SYMTAB_SIZE, link=2, align=8,
                             entsize=24),
        "rel_shdr": _shdr(23, "SHT_REL", 0, _REL_OFF, 16, link=3, info=1, align=8, entsize=16),
        "text": text,
        "strtab": _STRTAB,
        "first_sym": _sym(0),
        "sqrti_sym": _sym(28),
        "sqrti_rel": Container(r_offset=8, r_info=(1 << 32) | 2, r_info_sym=0, r_info_type=0),
    }
    parts["order"] = list(DEFAULT_ORDER)
    return parts


def serialize(parts: dict) -> bytes:
    """Write the parts named in ``parts['order']`` in order (containers: pyelftools' structs)."""
    s = ELFStructs(little_endian=True, elfclass=64)
    s.create_basic_structs()
    s.create_advanced_structs(e_type="ET_REL", e_machine="EM_BPF", e_ident_osabi="ELFOSABI_SYSV")
    out = bytearray()
    for name in parts["order"]:
        part = parts[name]
        if isinstance(part, str):
            out += part.encode("latin-1")
        elif isinstance(part, (bytes, bytearray)):
            out += part
        elif name == "ehdr":
            out += s.Elf_Ehdr.build(part)
        elif name.endswith("shdr"):
            out += s.Elf_Shdr.build(part)
        elif name.endswith("rel"):
            out += s.Elf_Rel.build(part)
        elif name.endswith("sym"):
            out += s.Elf_Sym.build(part)
        else:
            raise ValueError(f"pyelf part {name!r} is neither bytes nor a known ELF structure")
    return bytes(out)


def build_pyelf_object(statements: str) -> bytes:
    """Build the template object, run a ``-- pyelf`` section's statements on it, serialize it.

    The statements see only the template's parts (``ehdr``, ``text_shdr``, ``sqrti_rel``, ...,
    ``order``) and no builtins: they are data from the corpus, not arbitrary scripts. Raises
    ``ValueError`` when the statements or the resulting structures are invalid (a broken test,
    not a loader failure).
    """
    parts = template()
    namespace = dict(parts, __builtins__={})
    try:
        exec(compile(statements, "<pyelf>", "exec"), namespace)  # noqa: S102 - corpus data, no builtins
    except Exception as exc:  # a broken test must not look like a load error
        raise ValueError(f"pyelf statements failed: {type(exc).__name__}: {exc}") from None
    try:
        return serialize(namespace)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot serialize the pyelf object: {type(exc).__name__}: "
                         f"{exc}") from None


__all__ = ["DEFAULT_ORDER", "build_pyelf_object", "serialize", "template"]
