"""CLI subcommands of the device layer: ``hermes info`` (BAR0 geometry) and ``hermes run``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import HermesError
from . import budget_arg, engine_arg, int_arg, load_program, write_output


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def _open(args: argparse.Namespace, **options: object):
    from ..lib import open_device
    if getattr(args, "engine", None):
        options["engine"] = args.engine
    if getattr(args, "budget", None) is not None:
        options["budget"] = args.budget
    return open_device(args.device, **options)


def format_info(info: dict) -> str:
    """Human-readable device description (the Hermes BAR0 geometry when there is one)."""
    lines = [f"device:            {info.get('spec', '?')}"]
    if "version" in info:
        lines += [
            f"interface version: {info['version']}",
            f"build:             {info['build'] or '(empty)'}",
            f"engines:           {info['engines']}",
            f"program slots:     {info['program_slots']} x {_size(info['program_slot_size'])} "
            f"at BAR4 {info['program_slot_offset']:#x}",
            f"data slots:        {info['data_slots']} x {_size(info['data_slot_size'])} "
            f"at BAR4 {info['data_slot_offset']:#x}",
            f"BAR4 size:         {_size(info['bar4_size'])}",
            f"DMA channels:      {info['h2c_channels']} H2C, {info['c2h_channels']} C2H",
        ]
    else:
        lines += [f"{key + ':':<19}{value}" for key, value in info.items() if key != "spec"]
    return "\n".join(lines)


def _info(args: argparse.Namespace) -> int:
    with _open(args) as dev:
        print(format_info(dev.info()))
    return 0


def _run(args: argparse.Namespace) -> int:
    program = load_program(args.program)
    data = Path(args.input).read_bytes() if args.input else b""
    with _open(args) as dev:
        slot = dev.info().get("data_slot_size")
        if slot is not None and len(data) > slot:
            raise HermesError(f"--input {args.input} is {len(data)} bytes, larger than the "
                              f"device's data slot ({slot} bytes)")
        result = dev.run(program, data, read=args.read)
    print(f"r0 = {result.return_value:#x} ({result.return_value})")
    if args.output:
        write_output(args.output, result.data)
        print(f"{args.output}: {len(result.data)} bytes of the data slot", file=sys.stderr)
    return 0


def register(sub: "argparse._SubParsersAction") -> None:
    """Add ``hermes info`` and ``hermes run``."""
    p = sub.add_parser("info", help="show a device's geometry (BAR0 registers, DMA channels)")
    p.add_argument("--device", default="emu", metavar="SPEC",
                   help="device spec: emu (default), cpu, vfio-user:PATH, ...")
    p.set_defaults(func=_info)

    p = sub.add_parser("run", help="run a program on a device with an input file as data",
                       description="Load PROGRAM into a device, put --input at offset 0 of a data "
                       "slot, run it, print r0 and write the data slot back to --output.")
    p.add_argument("program", metavar="PROGRAM", help="program: .o (ELF), .s/.asm or raw .bin")
    p.add_argument("--input", metavar="FILE", help="data slot contents (default: empty)")
    p.add_argument("--output", metavar="FILE",
                   help="where to write the data slot after the run (as many bytes as the input, "
                   "or --read)")
    p.add_argument("--read", type=int_arg(0), metavar="N",
                   help="bytes of the data slot to write back")
    p.add_argument("--device", default="emu", metavar="SPEC",
                   help="device spec: emu (default), cpu, vfio-user:PATH, ...")
    p.add_argument("--engine", type=engine_arg, metavar="NAME",
                   help="engine executing the program (interp, jit)")
    p.add_argument("--budget", type=budget_arg, metavar="N", help="instruction budget per run")
    p.set_defaults(func=_run)
