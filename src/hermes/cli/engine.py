"""CLI subcommands of the engine layer: asm, disasm, exec (--trace), conformance(-plugin)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from ..engine import (
    CONFORMANCE_HELPERS,
    DEFAULT_BUDGET,
    DEVICE_HELPERS,
    Cancel,
    RunResult,
    load as _load,
)
from ..engine.asm import assemble, source_text
from ..engine.disasm import SourceLine, annotated, insn_texts, labels, source_lines
from ..engine.frontends import read_program
from ..engine.helpers import RunState, merged
from ..engine.program import Program
from ..engine.reference import Reference, Step
from ..errors import DataTooLarge, ExecutionError, HermesError, UsageError
from . import (
    MAX_RUN_ARGS,
    add_executor_option,
    budget_arg,
    int_arg,
    interruptible,
    load_program,
    run_arg,
    write_output,
)

#: Lines ``hermes exec --trace`` prints unless ``--trace-limit`` says otherwise.
DEFAULT_TRACE_LIMIT = 10_000


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
    elf = data[:4] == b"\x7fELF"
    if not elf and (args.elf or args.function or args.section):
        option = "--elf" if args.elf else "--function" if args.function else "--section"
        raise UsageError(f"{args.file}: {option} needs an ELF object (.o), and this file is not "
                         "one")
    try:
        if args.elf:
            from ..engine.elf import describe_elf
            text = describe_elf(data)
        else:
            from ..engine.elf import load_elf
            program = (load_elf(data, function=args.function, section=args.section)
                       if elf else read_program(args.file))
            text = annotated(program, verbose=args.verbose)
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


def _window(args: argparse.Namespace) -> tuple[bytearray | None, int | None]:
    """The data window of ``exec`` and the input length (r2): the input, then zeros up to
    ``--size``; no input and no ``--size`` is a run without a window (r1 = r2 = 0)."""
    data = _memory(args)
    if args.size is None:
        return data, None
    data = data if data is not None else bytearray()
    if args.size < len(data):
        raise DataTooLarge(f"the input ({len(data)} bytes) does not fit a window of --size "
                           f"{args.size} bytes", len(data), args.size)
    length = len(data)
    data += bytes(args.size - length)
    return data, length


class TraceWriter:
    """The step hook of ``exec --trace``: one line per instruction (pc, instruction, the
    registers it changed, the memory it stored), at most ``limit`` lines, then a count; for an
    object compiled with ``-g``, the C source line whenever execution reaches another one."""

    def __init__(self, program: Program, out: TextIO, limit: int):
        self.texts = insn_texts(program.insns, labels(program.insns, program.symbols))
        self.width = min(32, max(len(t) for t in self.texts.values()))
        self.source = source_lines(program)
        self.shown: SourceLine | None = None
        self.out = out
        self.limit = limit
        self.steps = 0

    def __call__(self, step: Step) -> None:
        """Print one executed instruction (or only count it past the limit)."""
        self.steps += 1
        if self.steps > self.limit:
            return
        here = self.source.get(step.pc)
        if here is not None and here != self.shown:
            self.out.write(here.comment() + "\n")
            self.shown = here
        pairs = enumerate(zip(step.before, step.after, strict=True))
        changes = [f"r{r} = {new:#x}" for r, (old, new) in pairs if old != new]
        changes += [f"[{addr:#x}] = {value:#x} ({size} byte{'s' if size > 1 else ''})"
                    for addr, size, value in step.stores]
        line = f"{step.pc:6d}: {self.texts[step.pc]:{self.width}}  {', '.join(changes)}"
        self.out.write(line.rstrip() + "\n")

    def finish(self) -> None:
        """Say how many instructions ran past the limit and were not shown."""
        hidden = self.steps - self.limit
        if hidden > 0:
            self.out.write(f"... {hidden} more instruction{'s' if hidden > 1 else ''} not shown "
                           f"(--trace-limit {self.limit})\n")
        self.out.flush()


def _exec(args: argparse.Namespace) -> int:
    if len(args.arg) > MAX_RUN_ARGS:
        args.parser.error(f"argument --arg: at most {MAX_RUN_ARGS} run arguments, got "
                          f"{len(args.arg)}")
    if args.trace and args.executor is not None:
        args.parser.error("argument --trace: runs on the reference interpreter "
                          "(hermes.engine.reference), so --executor does not apply")
    program = load_program(args.file, function=args.function, section=args.section)
    helpers = merged(CONFORMANCE_HELPERS, DEVICE_HELPERS)
    data, length = _window(args)
    cancel = Cancel()
    run_args = tuple(args.arg)
    if args.trace:
        exe = Reference(program, helpers=helpers,
                        budget=args.budget if args.budget is not None else DEFAULT_BUDGET)
        tracer = TraceWriter(program, sys.stdout, args.trace_limit)
        state = RunState()

        def work() -> RunResult:
            try:
                return exe.run(data, step=tracer, state=state, length=length, args=run_args,
                               cancel=cancel)
            except ExecutionError:
                _print_text(state, sys.stderr)  # what it printed before it failed
                raise
            finally:
                tracer.finish()
    else:
        loaded = _load(program, helpers=helpers, executor=args.executor, budget=args.budget)

        def work() -> RunResult:
            return loaded.run(data, length=length, args=run_args, cancel=cancel)
    result = interruptible(work, cancel.set)
    _print_text(result, sys.stderr)
    print(f"{result.return_value:#x}")
    if args.verbose:
        print(f"instructions: {result.instructions}", file=sys.stderr)
    return 0


def _print_text(result: RunResult | RunState, err: TextIO) -> None:
    """What the program printed (``bpf_trace_printk``), on ``err``, as ``hermes run`` shows it."""
    from .device import print_trace
    print_trace(result.trace.decode("utf-8", "replace"), err)
    if result.trace_dropped:
        err.write(f"({result.trace_dropped} bytes of printed text dropped)\n")


def _conformance(args: argparse.Namespace) -> int:
    from ..conformance import run_corpus
    outcomes = run_corpus(args.dirs, executor=args.executor)
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
    status, line = plugin_main(sys.stdin.read(), args.memory or "", executor=args.executor)
    print(line, file=sys.stdout if status == 0 else sys.stderr)
    return status


def _entry_options(p: argparse.ArgumentParser) -> None:
    entry = p.add_mutually_exclusive_group()
    entry.add_argument("--function", metavar="NAME",
                       help="the ELF object's function to use (default: its only global one)")
    entry.add_argument("--section", metavar="NAME", help="the ELF object's code section to use")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the engine subcommands."""
    p = sub.add_parser("asm", help="assemble a .s file into raw instruction bytes")
    p.add_argument("file")
    p.add_argument("-o", "--output", help="output file (default FILE.bin)")
    p.set_defaults(func=_asm)

    p = sub.add_parser("disasm", help="disassemble raw bytes or an ELF object",
                       description="A listing with function headers, labels for jump targets "
                       "and, for an object compiled with -g, the C source line before the "
                       "instructions it produced. Without -v it assembles back to the same code.")
    p.add_argument("file")
    p.add_argument("-v", "--verbose", action="store_true", help="slot numbers and raw hex")
    p.add_argument("--elf", action="store_true",
                   help="the ELF object's sections, symbols, relocations and linked programs")
    _entry_options(p)
    p.set_defaults(func=_disasm)

    p = sub.add_parser("exec", help="run a program on an executor and print r0",
                       description="Runs a program straight on an executor (no device) and prints "
                       "r0; what it prints with bpf_trace_printk goes to stderr.")
    p.add_argument("file", help="program: .o (ELF), .s/.asm (assembly) or raw bytes")
    p.add_argument("--mem", help="the input as hex")
    p.add_argument("--mem-file", help="the input from a file")
    p.add_argument("--size", type=int_arg(0), metavar="N",
                   help="the data window's size in bytes (>= the input; zeros past it); r2 "
                   "stays the input length")
    p.add_argument("--arg", type=run_arg, action="append", default=[], metavar="N",
                   help=f"a run argument (r3, r4, r5 at entry; repeat up to {MAX_RUN_ARGS} "
                   "times)")
    _entry_options(p)
    add_executor_option(p, "interp or jit (default jit)")
    p.add_argument("--budget", type=budget_arg, help="instruction budget")
    p.add_argument("--trace", action="store_true",
                   help="print every executed instruction: pc, instruction, the registers it "
                   "changed, the memory it stored (runs on the reference interpreter)")
    p.add_argument("--trace-limit", type=int_arg(0), default=DEFAULT_TRACE_LIMIT, metavar="N",
                   help=f"lines --trace prints at most (default {DEFAULT_TRACE_LIMIT}); the "
                   "rest is counted")
    p.add_argument("-v", "--verbose", action="store_true", help="also the instruction count")
    p.set_defaults(func=_exec, parser=p)

    p = sub.add_parser("conformance", help="run conformance corpora (.data files)")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    add_executor_option(p, "interp or jit")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and totals")
    p.set_defaults(func=_conformance)

    p = sub.add_parser("conformance-plugin",
                       help="bpf_conformance plugin: program hex on stdin, memory hex as argument")
    p.add_argument("memory", nargs="?", default="")
    add_executor_option(p, "interp or jit")
    p.set_defaults(func=_plugin)
