"""CLI subcommands of the device layer: ``hermes info`` (geometry), ``hermes run`` (one offload)
and ``hermes scan`` (one program over a source larger than a slot)."""
from __future__ import annotations

import argparse
import codecs
import contextlib
import mmap
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from ..errors import DataTooLarge, ExecutionError, HermesError
from . import (
    MAX_RUN_ARGS,
    add_executor_option,
    budget_arg,
    int_arg,
    interruptible,
    load_program,
    run_arg,
    seconds_arg,
    write_output,
)

#: ``hermes scan --reduce`` operations on the pieces' r0: (initial value, step).
REDUCERS: dict[str, tuple[int | None, Callable[[int | None, int], int]]] = {
    "sum": (0, lambda acc, r0: acc + r0),  # type: ignore[operator]
    "min": (None, lambda acc, r0: r0 if acc is None else min(acc, r0)),
    "max": (None, lambda acc, r0: r0 if acc is None else max(acc, r0)),
    "xor": (0, lambda acc, r0: acc ^ r0),  # type: ignore[operator]
    "count": (0, lambda acc, r0: acc + (r0 != 0)),  # type: ignore[operator]
}
#: Seconds between two redraws of the progress bar.
PROGRESS_INTERVAL = 0.1
#: Width of the progress bar in characters.
PROGRESS_WIDTH = 30


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def _bytes(n: float) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{int(n)} B"


def duration(seconds: float | None) -> str:
    """``seconds`` in the unit that reads best (``3.1 us``, ``12.50 ms``, ``2.003 s``)."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def _open(args: argparse.Namespace, **options: object):
    from ..lib import open_device
    if getattr(args, "executor", None):
        options["executor"] = args.executor
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


@contextlib.contextmanager
def mapped_input(path: str | None) -> Iterator[memoryview | bytes]:
    """The bytes of ``path`` (memory-mapped: the library refuses an input larger than the slot
    before anything is copied), ``b""`` for no path or an empty file."""
    if path is None:
        yield b""
        return
    with open(path, "rb") as f:
        if Path(path).stat().st_size == 0:
            yield b""
            return
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(m)
        try:
            yield view
        finally:
            # A view the library derived may still be referenced (by the traceback of the
            # error being raised): then the mapping is closed when it is collected.
            with contextlib.suppress(BufferError):
                view.release()
                m.close()


def _program(args: argparse.Namespace) -> object:
    return load_program(args.program, function=args.function, section=args.section)


def print_trace(text: str, err: TextIO) -> None:
    """Show a run's printed text (``bpf_trace_printk``) on ``err``, ending with a newline."""
    if text:
        err.write(text if text.endswith("\n") else text + "\n")
        err.flush()


def _run(args: argparse.Namespace) -> int:
    from ..engine import Cancel
    program = _program(args)
    cancel = Cancel()

    def work() -> int:
        with mapped_input(args.input) as data, _open(args) as dev:
            try:
                result = dev.run(program, data, args=tuple(args.arg), size=args.size,
                                 read=args.read, budget=args.budget, timeout=args.timeout,
                                 cancel=cancel)
            except DataTooLarge as exc:
                if args.input and exc.size == len(data):  # the input itself does not fit
                    raise HermesError(f"--input {args.input} is {len(data)} bytes, larger than "
                                      f"the device's data slot ({exc.limit} bytes)") from None
                raise
            except ExecutionError as exc:   # what it printed helps to see how far it got
                print_trace(exc.trace, sys.stderr)
                raise
            out = bytes(result.data)
        print_trace(result.trace, sys.stderr)
        print(f"r0 = {result.return_value:#x} ({result.return_value})")
        print(f"instructions: {result.instructions if result.instructions is not None else '-'}")
        print(f"time: {duration(result.elapsed)}")
        if args.output:
            write_output(args.output, out)
            print(f"{args.output}: {len(out)} bytes of output", file=sys.stderr)
        return 0

    return interruptible(work, cancel.set) or 0


class Progress:
    """A progress bar on a terminal, redrawn at most every ``PROGRESS_INTERVAL`` seconds; as the
    ``progress(done, total)`` callback of ``scan`` it may be called from any thread."""

    def __init__(self, out: TextIO | None, start: float):
        self.out = out
        self.start = start
        self.done = 0
        self._lock = threading.Lock()
        self._drawn = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        with self._lock:
            self.done = max(self.done, done)
            now = time.monotonic()
            if self.out is None or (now - self._drawn < PROGRESS_INTERVAL and done != total):
                return
            self._drawn = now
            rate = self.done / max(now - self.start, 1e-9)
            speed = f"{rate / 1e9:.2f} GB/s" if rate >= 1e9 else f"{rate / 1e6:.1f} MB/s"
            if total:
                part = min(self.done / total, 1.0)
                filled = int(part * PROGRESS_WIDTH)
                bar = "#" * filled + "." * (PROGRESS_WIDTH - filled)
                text = f"[{bar}] {part * 100:5.1f}% {_bytes(self.done)} / {_bytes(total)}"
            else:
                text = f"{_bytes(self.done)}"
            self.out.write(f"\r{text}  {speed} ")
            self.out.flush()

    def clear(self) -> None:
        """Erase the bar (before other lines are printed); the next call draws it again."""
        self._end("\r\033[K")

    def finish(self) -> None:
        """End the bar's line (nothing when no bar is drawn)."""
        self._end("\n")

    def _end(self, text: str) -> None:
        with self._lock:
            if self.out is not None and self._drawn:
                self.out.write(text)
                self.out.flush()
                self._drawn = 0.0


def delimiter_arg(text: str) -> bytes:
    """An argparse ``type`` for ``--delimiter``: text with backslash escapes (``\\n``, ``\\t``,
    ``\\x00``, ``\\\\``), as bytes; never empty."""
    try:
        value = codecs.escape_decode(text.encode())[0]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad escape in {text!r}: {exc}") from None
    if not value:
        raise argparse.ArgumentTypeError("the delimiter must not be empty")
    return value


@contextlib.contextmanager
def _source(name: str) -> Iterator[object]:
    """``scan``'s source for SOURCE: standard input for ``-``, else the path (checked here so a
    missing file is an error naming it before any device is opened)."""
    if name == "-":
        yield sys.stdin.buffer
        return
    with open(name, "rb"):
        pass
    yield name


def _scan(args: argparse.Namespace) -> int:
    program = _program(args)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    stop = threading.Event()

    def work() -> int:
        with _source(args.source) as source, _open(args) as dev:
            start = time.monotonic()
            bar = Progress(sys.stderr if show else None, start)
            counted = [0]
            options = dict(piece_size=args.piece_size, record=args.record,
                           delimiter=args.delimiter, args=tuple(args.arg), size=args.size,
                           read=0, budget=args.budget, timeout=args.timeout,
                           workers=args.workers, progress=bar)
            try:
                if args.reduce == "none":
                    for result in dev.scan(program, source, **options):
                        if stop.is_set():
                            raise KeyboardInterrupt
                        counted[0] += 1
                        bar.clear()
                        print(f"piece {result.index} at {result.offset}: r0 = "
                              f"{result.return_value:#x} ({result.return_value})", flush=True)
                    value = None
                else:
                    initial, step = REDUCERS[args.reduce]

                    # the accumulator is boxed: scan(initial=None) would mean "no initial"
                    def fold(acc: tuple[int | None], result: object) -> tuple[int | None]:
                        if stop.is_set():
                            raise KeyboardInterrupt
                        counted[0] += 1
                        return (step(acc[0], result.return_value),)  # type: ignore[attr-defined]

                    (value,) = dev.scan(program, source, reduce=fold, initial=(initial,),
                                        **options)
            finally:
                bar.finish()
            seconds = time.monotonic() - start
        if value is not None:
            print(f"{args.reduce} of r0 = {value:#x} ({value})")
        elif args.reduce != "none":
            print(f"{args.reduce} of r0 = - (no pieces)")
        rate = bar.done / max(seconds, 1e-9) / 1e9
        print(f"{counted[0]} pieces, {bar.done} bytes in {duration(seconds)}: {rate:.3f} GB/s")
        return 0

    return interruptible(work, stop.set) or 0


def _common_run_options(p: argparse.ArgumentParser) -> None:
    """The options ``run`` and ``scan`` share: program entry, arguments, window, limits, device."""
    entry = p.add_mutually_exclusive_group()
    entry.add_argument("--function", metavar="NAME",
                       help="the ELF object's function to run (default: its only global one)")
    entry.add_argument("--section", metavar="NAME",
                       help="the ELF object's code section to run (e.g. xdp, .text)")
    p.add_argument("--arg", type=run_arg, action="append", default=[], metavar="N",
                   help=f"a run argument (r3, r4, r5 = arg0..arg2 at entry; decimal or 0x hex; "
                   f"repeat up to {MAX_RUN_ARGS} times)")
    p.add_argument("--size", type=int_arg(0), metavar="N",
                   help="the data window's size in bytes (>= the input; bytes past the input "
                   "read as zero): room for output larger than the input")
    p.add_argument("--budget", type=budget_arg, metavar="N",
                   help="instruction budget per run (default: the device's)")
    p.add_argument("--timeout", type=seconds_arg, metavar="S",
                   help="abort a run that has not finished after S seconds")
    p.add_argument("--device", default="emu", metavar="SPEC",
                   help="device spec: emu (default), cpu, vfio-user:PATH, vfio:BDF")
    add_executor_option(p, "what executes the program (interp, jit)")


def _program_parser(sub: argparse._SubParsersAction, name: str, summary: str,
                    description: str) -> argparse.ArgumentParser:
    """A subcommand whose first operand is the program to run."""
    p = sub.add_parser(name, help=summary, description=description)
    p.add_argument("program", metavar="PROGRAM", help="program: .o (ELF), .s/.asm or raw .bin")
    return p


def _checked(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]
             ) -> Callable[[argparse.Namespace], int]:
    """``func`` behind the checks argparse cannot express (a usage error, status 2, each)."""
    def run(args: argparse.Namespace) -> int:
        if len(args.arg) > MAX_RUN_ARGS:
            parser.error(f"argument --arg: at most {MAX_RUN_ARGS} run arguments, got "
                         f"{len(args.arg)}")
        return func(args)
    return run


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``hermes info``, ``hermes run`` and ``hermes scan``."""
    p = sub.add_parser("info", help="show a device's geometry (BAR0 registers, DMA channels)")
    p.add_argument("--device", default="emu", metavar="SPEC",
                   help="device spec: emu (default), cpu, vfio-user:PATH, ...")
    p.set_defaults(func=_info)

    p = _program_parser(sub, "run", "run a program once on an input file",
                        "Load PROGRAM into a device, run it on --input (r1 = the data "
                        "window, r2 = the input length, r3..r5 = --arg values), print r0, the "
                        "instructions executed and the run time, show the text it printed "
                        "(bpf_trace_printk) on stderr and write its output to --output. Ctrl-C "
                        "aborts the run (exit status 130).")
    p.add_argument("--input", metavar="FILE", help="the input (default: empty)")
    p.add_argument("--output", metavar="FILE",
                   help="where to write the output (--read bytes, else the length the program "
                   "set with hermes_set_output, else the input's length)")
    p.add_argument("--read", type=int_arg(0), metavar="N",
                   help="bytes of the window to take as the output")
    _common_run_options(p)
    p.set_defaults(func=_checked(p, _run))

    p = _program_parser(sub, "scan", "run a program over every piece of a large file",
                        "Split SOURCE (a file, or - for standard input) into pieces of at most "
                        "--piece-size bytes (records never straddle two pieces with --record or "
                        "--delimiter), run PROGRAM on each on every engine of the device, and "
                        "print the pieces' r0 reduced with --reduce (or one line per piece with "
                        "--reduce none), the pieces, bytes and GB/s.")
    p.add_argument("source", metavar="SOURCE", help="the file to scan (- for standard input)")
    p.add_argument("--piece-size", type=int_arg(1), metavar="N",
                   help="largest piece in bytes (default: the device's data slot size)")
    boundary = p.add_mutually_exclusive_group()
    boundary.add_argument("--record", type=int_arg(1), metavar="N",
                          help="fixed-size records of N bytes: pieces are multiples of N")
    boundary.add_argument("--delimiter", type=delimiter_arg, metavar="TEXT",
                          help="records end with TEXT (escapes like \\n): each piece ends just "
                          "after a delimiter")
    p.add_argument("--reduce", choices=("sum", *[k for k in REDUCERS if k != "sum"], "none"),
                   default="sum", help="how to combine the pieces' r0: sum (default), min, "
                   "max, xor, count (pieces with r0 != 0), none (one line per piece)")
    p.add_argument("--workers", type=int_arg(1), metavar="N",
                   help="runs in flight at once (default: one per engine)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="draw a progress bar on stderr (default: when stderr is a terminal)")
    _common_run_options(p)
    p.set_defaults(func=_checked(p, _scan))
