"""The ``hermes`` command: one entry point dispatching to per-layer subcommand modules."""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from ..errors import HermesError

#: Modules of ``hermes.cli`` that add subcommands; each has ``register(subparsers)``.
SUBCOMMAND_MODULES = ("engine", "device", "demo", "bench", "serve", "rtl")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="hermes", description="Hermes eBPF accelerator tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (errors are one line on stderr, no traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HermesError as exc:
        print(f"hermes: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "")
        print(f"hermes: error: {exc.strerror or exc}{f' ({name})' if name else ''}"
              f"{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
