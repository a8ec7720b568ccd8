"""``hermes cflags``: the compiler flags that find the public C header ``hermes.h``."""
from __future__ import annotations

import argparse

from ..engine.clang import DEFAULT_FLAGS, include_dir


def cflags(full: bool = False) -> str:
    """``-I<dir of hermes.h>``; with ``full``, preceded by the flags of a Hermes object
    (``-target bpf -O2``), as ``compile_c`` uses them."""
    flag = f"-I{include_dir()}"
    return " ".join((*DEFAULT_FLAGS, flag)) if full else flag


def _cflags(args: argparse.Namespace) -> int:
    print(cflags(args.all))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``hermes cflags``."""
    p = sub.add_parser("cflags", help="print the -I flag of the hermes.h header",
                       description="Prints the clang flag that finds hermes.h, e.g. "
                       "clang -target bpf -O2 -mcpu=v3 $(hermes cflags) -c prog.c -o prog.o")
    p.add_argument("--all", action="store_true",
                   help="also print the target and optimisation flags (-target bpf -O2)")
    p.set_defaults(func=_cflags)
