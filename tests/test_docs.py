"""The docs name only things that exist: every dotted ``hermes.x.y`` name written in README.md,
docs/*.md and specs/*.md imports or resolves, every repository path they give is a file or
folder of this repository (paths of ``hermes`` modules may be given from ``src/hermes``), and
every ``--flag`` written after ``hermes COMMAND`` is a visible option of that command."""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "specs").glob("*.md")])

#: ``hermes.a.b`` not inside a longer word, path or address.
DOTTED = re.compile(r"(?<![\w/.-])hermes(?:\.[A-Za-z_]\w*)+(?![\w*])")
#: Dotted names that are not Python names (a dask configuration key).
NOT_PYTHON = {"hermes.devices"}
#: Files named ``hermes.<ext>`` (the C header, sockets, build outputs), not Python names.
FILE_SUFFIXES = {"h", "c", "o", "ko", "sock", "v", "py", "s", "log", "bin", "elf"}
#: ``dir/.../name.ext`` (at least one folder), not inside a longer word, path or address.
PATH = re.compile(r"(?<![\w/.~$<{-])((?:[\w.-]+/)+[\w-]+\."
                  r"(?:py|md|c|h|sh|toml|ya?ml|json|data|s))\b")
#: Folders a document's paths may also be relative to, besides the repository and src/hermes.
BASES = {"specs/linux-driver.md": "drivers/linux"}
#: Paths the docs give that are not files of this repository: the shared corpus and references
#: beside the checkout, other projects' headers and sources (Linux, QEMU), files tools write, and
#: placeholders.
NOT_OURS = re.compile(r"^(\.\./|conformance/|build/|linux/|hw/|vm/guest/jobs/JOB\.sh$)")


def _names() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for name in sorted(set(DOTTED.findall(doc.read_text()))):
            name = name.rstrip(".")
            if name.rsplit(".", 1)[-1] not in FILE_SUFFIXES and name not in NOT_PYTHON:
                out.append((doc.relative_to(ROOT).as_posix(), name))
    return out


def _paths() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for path in sorted(set(PATH.findall(doc.read_text()))):
            if not NOT_OURS.match(path):
                out.append((doc.relative_to(ROOT).as_posix(), path))
    return out


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, AttributeError, ValueError):  # a parent that is a module, not a package
        return False


def resolve(name: str) -> object:
    """The object a dotted name names: the longest importable module, then attributes (a module
    is found without being run, so ``hermes.__main__`` does not start the CLI)."""
    if _is_module(name):
        return name
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        for attr in parts[n:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


@pytest.mark.parametrize("doc, name", _names())
def test_dotted_name_exists(doc, name):
    try:
        resolve(name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{doc} names {name}, which does not exist ({exc})")


@pytest.mark.parametrize("doc, path", _paths())
def test_path_exists(doc, path):
    where = [ROOT / path, ROOT / "src" / path, ROOT / "src" / "hermes" / path]
    if doc in BASES:
        where.append(ROOT / BASES[doc] / path)
    assert any(p.exists() for p in where), f"{doc} gives {path}, which is not in the repository"


#: ``hermes COMMAND ...`` up to the end of a code span or table cell, and the flags in it.
COMMAND = re.compile(r"\bhermes ([a-z][a-z-]+)\b([^`|]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _visible_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The options of ``parser`` and its subcommands, without the hidden (deprecated) ones."""
    out = {"--help"}
    for action in parser._actions:
        if action.help != argparse.SUPPRESS:
            out.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _visible_flags(sub)
    return out


@functools.cache
def _commands() -> dict[str, set[str]]:
    from hermes.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: _visible_flags(p) for name, p in sub.choices.items()}


def _flags() -> list[tuple[str, str, str]]:
    commands = _commands()
    out = set()
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            for m in COMMAND.finditer(line):
                if m.group(1) in commands:
                    out.update((doc.relative_to(ROOT).as_posix(), m.group(1), flag)
                               for flag in FLAG.findall(m.group(2)))
    return sorted(out)


@pytest.mark.parametrize("doc, command, flag", _flags())
def test_command_flag_exists(doc, command, flag):
    assert flag in _commands()[command], f"{doc}: hermes {command} has no option {flag}"


def test_the_docs_are_checked():
    assert len(_names()) > 50 and len(_paths()) > 50 and len(_flags()) > 40
