"""CLI subcommands of the rtl layer: ``hermes rtl verilog|sim|synth|cpi``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import HermesError, UsageError
from . import int_arg, load_program, write_output


def _need_amaranth() -> None:
    try:
        import amaranth  # noqa: F401
    except ImportError:
        raise HermesError("the RTL needs Amaranth HDL: pip install 'amaranth>=0.5,<0.6'") from None


def _top(args: argparse.Namespace):
    from ..rtl.top import HermesTop
    try:
        return HermesTop(n_engines=args.engines, imem_depth=args.imem_depth,
                         dmem_bytes=args.dmem_bytes, forward_loads=args.forward_loads)
    except ValueError as exc:  # the RTL's own geometry rules
        raise UsageError(f"bad geometry --engines {args.engines} --imem-depth "
                         f"{args.imem_depth} --dmem-bytes {args.dmem_bytes}: {exc}") from None


def _verilog(args: argparse.Namespace) -> int:
    _need_amaranth()
    from ..rtl.build import to_verilog
    text = to_verilog(_top(args))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"{out}: {len(text.splitlines())} lines of Verilog, top module hermes_top "
          f"({args.engines} engine(s), {args.imem_depth} instruction slots, "
          f"{args.dmem_bytes} B data memory)")
    return 0


def _sim(args: argparse.Namespace) -> int:
    _need_amaranth()
    from ..rtl.sim import simulate
    program = load_program(args.program)
    memory = Path(args.input).read_bytes() if args.input else None
    try:
        result = simulate(program, memory, vcd=args.vcd, max_cycles=args.max_cycles,
                          forward_loads=args.forward_loads)
    except ValueError as exc:   # e.g. a program with .rodata, which the core does not map
        raise HermesError(str(exc)) from None
    if result.timeout:
        print(f"timeout: no exit within {args.max_cycles} cycles", file=sys.stderr)
    elif result.error is not None:
        print(f"error: {result.error_kind} at pc {result.error_pc} (code {result.error:#x})")
    else:
        print(f"r0: {result.return_value:#x}")
    print(f"cycles: {result.cycles}")
    print(f"instructions: {result.instructions}")
    print(f"CPI: {result.cpi:.3f}")
    if args.vcd:
        print(f"waveform: {args.vcd}")
    if args.output and result.memory is not None:
        write_output(args.output, bytes(result.memory))
    return 0 if result.error is None and not result.timeout else 1


def _synth(args: argparse.Namespace) -> int:
    _need_amaranth()
    from .rtl_tools.synth import synthesize
    report = synthesize(_top(args), target=args.target)
    print(report.summary())
    if args.log:
        Path(args.log).write_text(report.log)
    return 0


def _cpi(args: argparse.Namespace) -> int:
    _need_amaranth()
    from .. import engine
    from ..benchmarks import find_shared
    from .rtl_tools.cpi import REDUCED_N, format_table, load_bench, measure, reduced_input
    bench = Path(args.bench) if args.bench else find_shared("bench")
    if bench is None:
        raise HermesError("shared/bench not found; pass --bench DIR")
    rows = []
    for name, (program, full) in load_bench(bench).items():
        if args.only and name not in args.only:
            continue
        memory = reduced_input(name, full)
        row = measure(program, memory, name, REDUCED_N[name], forward_loads=args.forward_loads)
        want = engine.run(program, bytearray(memory), executor="interp")
        got = row.result
        if got.return_value != want.return_value or got.instructions != want.instructions or \
                bytes(got.memory or b"") != bytes(want.memory):
            raise HermesError(f"{name}: RTL disagrees with the interpreter "
                              f"(r0 {got.return_value} vs {want.return_value:#x})")
        rows.append(row)
        print(f"{name}: done", file=sys.stderr)
    print(format_table(rows))
    return 0


def _variant(p: argparse.ArgumentParser) -> None:
    p.add_argument("--forward-loads", action="store_true",
                   help="core variant whose loads take one cycle (value forwarded from memory)")


def _sizes(p: argparse.ArgumentParser) -> None:
    _variant(p)
    p.add_argument("--engines", type=int, default=1, help="number of engines (default 1)")
    p.add_argument("--imem-depth", type=int, default=1024,
                   help="instruction slots per engine (power of two, default 1024)")
    p.add_argument("--dmem-bytes", type=int, default=4096,
                   help="data memory bytes per engine (power of two, default 4096)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``hermes rtl ...`` to the hermes parser."""
    p = sub.add_parser("rtl", help="the eBPF engine as RTL (Amaranth): Verilog, simulation, "
                                   "synthesis")
    rsub = p.add_subparsers(dest="rtl_command", metavar="RTL_COMMAND")

    v = rsub.add_parser("verilog", help="write the device top as Verilog")
    v.add_argument("-o", "--output", default="build/hermes_engine.v")
    _sizes(v)
    v.set_defaults(func=_verilog)

    s = rsub.add_parser("sim", help="simulate one program on the core; print r0, cycles, CPI")
    s.add_argument("program", help="program file: assembly (.s/.asm), raw bytes or ELF")
    s.add_argument("--input", help="input memory file (the data slot); none: r1 = r2 = 0")
    s.add_argument("--vcd", help="write a VCD waveform (GTKWave) here")
    s.add_argument("--max-cycles", type=int_arg(1), default=10_000_000)
    s.add_argument("-o", "--output", help="write the data memory after the run here")
    _variant(s)
    s.set_defaults(func=_sim)

    y = rsub.add_parser("synth", help="synthesize with yosys; print LUTs, FFs, BRAMs, path depth")
    y.add_argument("--target", choices=("xilinx", "generic"), default="xilinx")
    y.add_argument("--log", help="write yosys's full log here")
    _sizes(y)
    y.set_defaults(func=_synth)

    c = rsub.add_parser("cpi", help="cycles per instruction on the bench programs (reduced inputs)")
    c.add_argument("--bench", help="the shared bench folder (default: found beside the checkout)")
    c.add_argument("only", nargs="*", help="program names (default: all)")
    _variant(c)
    c.set_defaults(func=_cpi)

    def _help(_args: argparse.Namespace) -> int:
        p.print_help()
        return 2
    p.set_defaults(func=_help)
