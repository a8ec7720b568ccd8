"""``hermes bench``: engine speed on the shared kernels, or device round trips with --device."""
from __future__ import annotations

import argparse

from . import add_executor_option, int_arg


def _bench(args: argparse.Namespace) -> int:
    if args.device:
        from ..benchmarks.device import main as device_main
        return device_main(args)
    from ..benchmarks.engine import main as engine_main
    return engine_main(args)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``hermes bench``."""
    p = sub.add_parser("bench", help="measure engines (default) or a device (--device)")
    add_executor_option(p, "executor to measure (interp, jit)")
    p.add_argument("--device", help="device spec to measure instead (emu, vfio-user:PATH...)")
    p.add_argument("--bench-dir", help="the shared bench folder (default: ../shared/bench)")
    p.add_argument("--kind", action="append", choices=["asm", "c"],
                   help="program sources to run (repeatable; default asm)")
    p.add_argument("--program", action="append", help="only this bench program (repeatable)")
    p.add_argument("--repeat", type=int_arg(1), default=3, help="runs per program (default 3)")
    p.set_defaults(func=_bench)
