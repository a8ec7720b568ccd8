"""``hermes demo``: compile the C examples, run them on the emulated device and the CPU, check."""
from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TextIO

from ..errors import HermesError

if TYPE_CHECKING:
    from ..engine import Program
    from ..lib import Device

#: Module name the examples' Python reference is registered under once loaded.
REFERENCE_MODULE = "hermes_examples_reference"
#: Input sizes of a default demo run (``max`` = the largest input whose window fits the slot).
DEFAULT_SIZES = ("0", "100", "4096", "65536", "max")


def find_examples_dir(explicit: str | Path | None = None) -> Path:
    """The examples folder: ``explicit``, else the repository's ``examples/`` (beside ``src/``),
    else ``./examples``. Raises ``HermesError`` when none holds a ``reference.py``."""
    if explicit is not None:
        candidates = [Path(explicit)]
    else:
        candidates = [Path(__file__).resolve().parents[3] / "examples", Path.cwd() / "examples"]
    for path in candidates:
        if (path / "reference.py").is_file():
            return path
    raise HermesError("examples not found (looked for reference.py in "
                      f"{', '.join(str(p) for p in candidates)}); pass --examples DIR")


def load_reference(examples_dir: str | Path) -> ModuleType:
    """Import ``examples_dir/reference.py`` (the examples' Python references) by path."""
    path = Path(examples_dir) / "reference.py"
    loaded = sys.modules.get(REFERENCE_MODULE)
    if (loaded is not None and loaded.__file__ is not None
            and Path(loaded.__file__).resolve() == path.resolve()):
        return loaded
    spec = importlib.util.spec_from_file_location(REFERENCE_MODULE, path)
    if spec is None or spec.loader is None:
        raise HermesError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[REFERENCE_MODULE] = module  # dataclasses look their module up while defining
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[REFERENCE_MODULE]
        raise
    return module


def build_examples(ref: ModuleType, out_dir: str | Path, names: list[str] | None = None
                   ) -> dict[str, Path]:
    """Compile the examples (all, or ``names``) into ``out_dir``; returns object paths by name."""
    from ..engine.clang import compile_c
    selected = [e for e in ref.EXAMPLES if not names or e.name in names]
    unknown = set(names or ()) - {e.name for e in ref.EXAMPLES}
    if unknown:
        raise HermesError(f"unknown example(s) {', '.join(sorted(unknown))}; examples: "
                          f"{', '.join(e.name for e in ref.EXAMPLES)}")
    return {e.name: compile_c(e.source, Path(out_dir) / f"{e.name}.o") for e in selected}


@dataclass
class Outcome:
    """One example run on one backend."""

    example: str
    backend: str
    size: int
    r0: int | None
    expected_r0: int
    seconds: float
    ok: bool
    detail: str = ""


def run_on(device: Device | None, program: Program, case: object, *,
           executor: str | None = None) -> tuple[int, bytes]:
    """Run ``program`` on an example's ``case`` (input, arguments, window size) on ``device``.

    ``device`` None means ``executor`` directly (``hermes.engine.run`` on a window of the case's
    size, the input at its start and zeros after it). Returns (r0, the run's output bytes).
    """
    data, args, size = case.data, tuple(case.args), case.size  # type: ignore[attr-defined]
    if device is None:
        from ..engine import run
        window = bytearray(len(data) if size is None else size)
        window[:len(data)] = data
        result = run(program, window, length=len(data), args=args, executor=executor)
        n = len(data) if result.output_length is None else result.output_length
        return result.return_value, bytes(window[:n])
    outcome = device.run(program, data, args=args, size=size)
    return outcome.return_value, bytes(outcome.data)


def _sizes(specs: list[str], max_input: int) -> list[int]:
    out = []
    for s in specs:
        try:
            n = max_input if s == "max" else int(s, 0)
        except ValueError:
            raise HermesError(f"--sizes: {s!r} is neither a number of bytes nor 'max'") from None
        out.append(min(max(n, 0), max_input))
    return out


def _open_devices(names: list[str]) -> list[tuple[str, Device | None]]:
    import hermes
    devices: list[tuple[str, Device | None]] = []
    for name in names:
        if name == "engine" or not hasattr(hermes, "open"):
            devices.append(("engine" if name == "engine" else f"{name}(engine)", None))
        else:
            devices.append((name, hermes.open(name)))
    return devices


def demo(examples_dir: str | Path | None = None, backends: list[str] | None = None,
         sizes: list[str] | None = None, seed: int = 2024, names: list[str] | None = None,
         out: TextIO | None = None) -> list[Outcome]:
    """Compile, run and check every example; prints a table to ``out`` (default stdout);
    returns the outcomes."""
    out = out if out is not None else sys.stdout
    ref = load_reference(find_examples_dir(examples_dir))
    backends = backends or ["emu", "cpu"]
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    devices = _open_devices(backends)
    try:
        with tempfile.TemporaryDirectory(prefix="hermes-demo-") as tmp:
            from ..engine.elf import load_elf
            objects = build_examples(ref, tmp, names)
            header = f"{'example':10} {'backend':8} {'input':>9} {'r0':>18} {'time':>9}  result"
            print(header, file=out)
            print("-" * len(header), file=out)
            for ex in ref.EXAMPLES:
                if ex.name not in objects:
                    continue
                program = load_elf(objects[ex.name])
                for size in _sizes(sizes or list(DEFAULT_SIZES), ex.max_input):
                    case = ex.make_case(rng, size)
                    r0_exp, out_exp = ex.expected(case)
                    for bname, device in devices:
                        t0 = time.perf_counter()
                        try:
                            r0, got = run_on(device, program, case)
                        except HermesError as exc:
                            o = Outcome(ex.name, bname, len(case.data), None, r0_exp,
                                        time.perf_counter() - t0, False, f"error: {exc}")
                        else:
                            dt = time.perf_counter() - t0
                            ok = r0 == r0_exp and got == out_exp
                            detail = "" if ok else (
                                f"expected r0 {r0_exp:#x}" if r0 != r0_exp else "output differs")
                            o = Outcome(ex.name, bname, len(case.data), r0, r0_exp, dt, ok,
                                        detail)
                        outcomes.append(o)
                        r0_text = "-" if o.r0 is None else f"{o.r0:#x}"
                        status = "OK" if o.ok else (
                            f"ERROR ({o.detail[7:]})" if o.detail.startswith("error: ")
                            else f"MISMATCH ({o.detail})")
                        print(f"{o.example:10} {o.backend:8} {o.size:>9} {r0_text:>18} "
                              f"{o.seconds * 1000:>7.1f}ms  {status}", file=out)
    finally:
        for _, device in devices:
            if device is not None:
                device.close()
    bad = sum(not o.ok for o in outcomes)
    print(f"\n{len(outcomes)} runs, {len(outcomes) - bad} OK, {bad} failed", file=out)
    return outcomes


def _demo(args: argparse.Namespace) -> int:
    outcomes = demo(args.examples, args.backend, args.sizes.split(",") if args.sizes else None,
                    args.seed, args.only)
    return 0 if outcomes and all(o.ok for o in outcomes) else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``hermes demo``."""
    p = sub.add_parser("demo", help="compile the C examples, run them on the emulated device and "
                       "the CPU, and check them against their Python references",
                       description="Compiles examples/*.c with clang -target bpf, runs each on "
                       "every backend on inputs of several sizes, compares r0 and the output "
                       "with the Python reference; exits 1 on any mismatch.")
    p.add_argument("--examples", metavar="DIR", help="examples folder (default: the repository's "
                   "examples/ or ./examples)")
    p.add_argument("--backend", action="append", metavar="SPEC",
                   help="device spec to run on (repeatable; default: emu and cpu; 'engine' = "
                   "hermes.engine.run directly)")
    p.add_argument("--sizes", metavar="N,N,...", help="input sizes in bytes ('max' = the "
                   f"largest that fits; default {','.join(DEFAULT_SIZES)})")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this example "
                   "(repeatable)")
    p.add_argument("--seed", type=int, default=2024, help="random seed of the inputs")
    p.set_defaults(func=_demo)
