"""CLI subcommands of the engine layer: asm, disasm, exec, conformance, conformance-plugin."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engine import CONFORMANCE_HELPERS, DEVICE_HELPERS
from ..engine import load as _load
from ..engine.asm import assemble, source_text
from ..engine.disasm import listing
from ..engine.helpers import merged
from ..engine.program import Program, decode
from ..errors import HermesError
from . import budget_arg, engine_arg, load_program, write_output


def _asm(args: argparse.Namespace) -> int:
    src = Path(args.file)
    try:
        code = assemble(source_text(src.read_bytes()))
        Program.from_bytes(code)  # validate what was assembled, e.g. jump targets
    except HermesError as exc:
        raise HermesError(f"{src}: {exc}") from None
    out = Path(args.output) if args.output else src.with_suffix(".bin")
    write_output(str(out), code)
    print(f"{out}: {len(code) // 8} instructions")
    return 0


def _disasm(args: argparse.Namespace) -> int:
    data = Path(args.file).read_bytes()
    try:
        if data[:4] == b"\x7fELF":
            from ..engine.elf import describe_elf
            text = describe_elf(data)
        else:
            text = listing(decode(data)) if args.verbose else Program.from_bytes(data).disasm()
    except HermesError as exc:
        raise HermesError(f"{args.file}: {exc}") from None
    sys.stdout.write(text)
    return 0


def _memory(args: argparse.Namespace) -> bytearray | None:
    if args.mem is not None:
        try:
            return bytearray(bytes.fromhex("".join(args.mem.split())))
        except ValueError:
            raise HermesError(f"--mem is not valid hex: {args.mem!r}") from None
    if args.mem_file:
        return bytearray(Path(args.mem_file).read_bytes())
    return None


def _exec(args: argparse.Namespace) -> int:
    program = load_program(args.file)
    exe = _load(program, helpers=merged(CONFORMANCE_HELPERS, DEVICE_HELPERS), engine=args.engine,
                budget=args.budget)
    result = exe.run(_memory(args))
    print(f"{result.return_value:#x}")
    if args.verbose:
        print(f"instructions: {result.instructions}", file=sys.stderr)
    return 0


def _conformance(args: argparse.Namespace) -> int:
    from ..conformance import run_corpus
    outcomes = run_corpus(args.dirs, engine=args.engine)
    if not outcomes:
        raise HermesError(f"no conformance cases (.data files) in {', '.join(args.dirs)}")
    passed = failed = skipped = 0
    for o in outcomes:
        if o.skipped:
            skipped += 1
            print(f"SKIP {o.case.name}: {o.skipped}")
        elif o.passed:
            passed += 1
            if not args.quiet:
                print(f"PASS {o.case.name}: {o.detail}")
        else:
            failed += 1
            print(f"FAIL {o.case.name}: {o.detail}")
    if skipped:
        print(f"({skipped} skipped)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def _plugin(args: argparse.Namespace) -> int:
    from ..conformance import plugin_main
    status, line = plugin_main(sys.stdin.read(), args.memory or "", engine=args.engine)
    print(line, file=sys.stdout if status == 0 else sys.stderr)
    return status


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the engine subcommands."""
    p = sub.add_parser("asm", help="assemble a .s file into raw instruction bytes")
    p.add_argument("file")
    p.add_argument("-o", "--output", help="output file (default FILE.bin)")
    p.set_defaults(func=_asm)

    p = sub.add_parser("disasm", help="disassemble raw bytes or an ELF object")
    p.add_argument("file")
    p.add_argument("-v", "--verbose", action="store_true", help="slot numbers and raw hex")
    p.set_defaults(func=_disasm)

    p = sub.add_parser("exec", help="run a program on an engine and print r0")
    p.add_argument("file", help="program: .o (ELF), .s/.asm (assembly) or raw bytes")
    p.add_argument("--mem", help="input memory as hex")
    p.add_argument("--mem-file", help="input memory from a file")
    p.add_argument("--engine", type=engine_arg, help="interp or jit")
    p.add_argument("--budget", type=budget_arg, help="instruction budget")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_exec)

    p = sub.add_parser("conformance", help="run conformance corpora (.data files)")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--engine", type=engine_arg, help="interp or jit")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and totals")
    p.set_defaults(func=_conformance)

    p = sub.add_parser("conformance-plugin",
                       help="bpf_conformance plugin: program hex on stdin, memory hex as argument")
    p.add_argument("memory", nargs="?", default="")
    p.add_argument("--engine", type=engine_arg, help="interp or jit")
    p.set_defaults(func=_plugin)
