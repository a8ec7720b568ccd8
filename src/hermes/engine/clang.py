"""Finding clang and compiling C sources into BPF relocatable objects for the ELF loader."""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from ..errors import HermesError

#: Message appended to every "clang is missing" error.
INSTALL_HINT = ("install it with `apt-get install clang-19` (or set HERMES_CLANG to a clang "
                "binary)")
#: Flags every example and test object is compiled with (the README's `clang -target bpf -O2 -c`).
DEFAULT_FLAGS = ("-target", "bpf", "-O2")
#: Folder of the public C header ``hermes.h`` (package data beside the ``hermes`` modules).
_INCLUDE_DIR = Path(__file__).resolve().parents[1] / "include"
#: The clang Hermes is tested with (Debian 12 has it in its archive as ``clang-19``).
PREFERRED_VERSION = 19
#: Oldest clang with ``-mcpu=v4`` (signed division and modulo, sign-extending loads and moves,
#: ``bswap``, ``gotol``); older ones reject signed ``/`` and ``%`` or crash on them.
V4_MIN_VERSION = 18
#: Versioned names looked for on PATH besides plain ``clang``.
_VERSIONS = range(40, 13, -1)


@functools.cache
def clang_version(path: str) -> int | None:
    """The major version of the clang at ``path`` (from ``--version``), or None when it does
    not run or says no version."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"clang version (\d+)", out.stdout)
    return int(found.group(1)) if found else None


def find_clang() -> str | None:
    """Path of a clang able to target BPF: ``$HERMES_CLANG``; else clang-19
    (``PREFERRED_VERSION``); else the newest clang on PATH (``clang-N`` or ``clang``); else
    None."""
    env = os.environ.get("HERMES_CLANG")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    found: dict[str, int] = {}
    for name in (*(f"clang-{v}" for v in _VERSIONS), "clang"):
        path = shutil.which(name)
        if path and path not in found:
            version = clang_version(path)
            if version == PREFERRED_VERSION:
                return path
            found[path] = version if version is not None else -1
    return max(found, key=found.__getitem__, default=None)


def supports_v4(path: str | None = None) -> bool:
    """Whether the clang at ``path`` (default ``find_clang()``) compiles ``-mcpu=v4``."""
    path = path or find_clang()
    version = clang_version(path) if path else None
    return version is not None and version >= V4_MIN_VERSION


def require_clang() -> str:
    """Like ``find_clang`` but raises ``HermesError`` with the install hint when clang is absent."""
    path = find_clang()
    if path is None:
        raise HermesError(f"clang was not found; {INSTALL_HINT}")
    return path


def include_dir() -> Path:
    """The folder holding ``hermes.h``: what ``-I`` must name to compile a Hermes program."""
    return _INCLUDE_DIR


def compile_c(src: str | Path, out: str | Path, *, extra_flags: tuple[str, ...] | list[str] = ()
              ) -> Path:
    """Compile C file ``src`` to the BPF object ``out`` (``clang -target bpf -O2 -I<include_dir()>
    -c``, so ``#include "hermes.h"`` works); returns ``out``.

    Raises ``HermesError`` when clang is missing or the compilation fails (with clang's messages).
    """
    clang = require_clang()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [clang, *DEFAULT_FLAGS, f"-I{include_dir()}", *extra_flags, "-c", str(src),
           "-o", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise HermesError(f"cannot run {clang}: {exc.strerror or exc}; {INSTALL_HINT}") from None
    except subprocess.TimeoutExpired:
        raise HermesError(f"clang timed out compiling {src}") from None
    if proc.returncode != 0:
        raise HermesError(f"clang failed to compile {src} (exit {proc.returncode}):\n"
                          f"{proc.stderr.strip()}")
    return out


__all__ = ["DEFAULT_FLAGS", "INSTALL_HINT", "PREFERRED_VERSION", "V4_MIN_VERSION",
           "clang_version", "compile_c", "find_clang", "include_dir", "require_clang",
           "supports_v4"]
