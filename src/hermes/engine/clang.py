"""Finding clang and compiling C sources into BPF relocatable objects for the ELF loader."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..errors import HermesError

#: Message appended to every "clang is missing" error.
INSTALL_HINT = "install it with `apt-get install clang` (or set HERMES_CLANG to a clang binary)"
#: Flags every example and test object is compiled with (the README's `clang -target bpf -O2 -c`).
DEFAULT_FLAGS = ("-target", "bpf", "-O2")
#: Folder of the public C header ``hermes.h`` (package data beside the ``hermes`` package's modules).
_INCLUDE_DIR = Path(__file__).resolve().parents[1] / "include"
_CANDIDATES = ("clang", *(f"clang-{v}" for v in range(20, 13, -1)))


def find_clang() -> str | None:
    """Path of a clang able to target BPF: ``$HERMES_CLANG``, else the first on PATH, else None."""
    env = os.environ.get("HERMES_CLANG")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    for name in _CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_clang() -> str:
    """Like ``find_clang`` but raises ``HermesError`` with the install hint when clang is absent."""
    path = find_clang()
    if path is None:
        raise HermesError(f"clang was not found; {INSTALL_HINT}")
    return path


def include_dir() -> Path:
    """The folder holding ``hermes.h``: what ``-I`` must name to compile a Hermes program."""
    return _INCLUDE_DIR


def compile_c(src: "str | Path", out: "str | Path", *, extra_flags: "tuple[str, ...] | list[str]" = ()
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


__all__ = ["DEFAULT_FLAGS", "INSTALL_HINT", "compile_c", "find_clang", "include_dir",
           "require_clang"]
