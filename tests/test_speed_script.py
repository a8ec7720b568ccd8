"""benchmarks/speed.py runs end to end on one small kernel and prints every table (no timings)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hermes.benchmarks import find_shared
from hermes.engine.clang import find_clang

ROOT = Path(__file__).resolve().parent.parent
BENCH = find_shared("bench")

pytestmark = pytest.mark.skipif(BENCH is None or find_clang() is None,
                                reason="needs shared/bench and clang")

HEADINGS = ["== run time per kernel", "== compile time per kernel", "== per-call overhead",
            "== interpreter, million instructions per second", "== scan of 4 MiB"]


def test_quick_run_prints_every_table() -> None:
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--quick",
                        "--no-peers", "--kernels", "sum_bytes", "--forms", "asm",
                        "--repeat", "2", "--scan-mib", "4"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    for heading in HEADINGS:
        assert heading in p.stdout, (heading, p.stdout)
    rows = [line for line in p.stdout.splitlines() if line.startswith("sum_bytes       asm")]
    # one row in each of the run, compile and interpreter tables, every result checked
    assert len(rows) == 3, p.stdout
    assert "WRONG" not in p.stdout
    assert "emu, memory" in p.stdout and "cpu, memory" in p.stdout
    assert "peers" in p.stdout.splitlines()[0]


def test_unknown_kernel_is_refused() -> None:
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--no-peers",
                        "--kernels", "nope"], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert p.returncode == 2 and "unknown kernels" in p.stderr


FAKE_GLUE = """#!{python}
import sys
mode, code, slot, out, n = sys.argv[1:]
data = open(slot, "rb").read()
open(out, "wb").write(data[:8] + b"x" + data[9:] if mode == "interp" else data)
print("compile_ns 1000")
print("r0", hex(len(open(code, "rb").read())))
print("min_ns 5")
print("median_ns 7")
"""


def test_peer_glue_is_found_run_and_checked(tmp_path: Path) -> None:
    """A stand-in for a built uBPF: speed.py finds it, parses its figures and checks its slot."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("speed", ROOT / "benchmarks" / "speed.py")
    assert spec is not None and spec.loader is not None
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    assert speed.find_peers(None) == {} and speed.find_peers(tmp_path) == {}
    for f in ("ubpf/vm/inc/ubpf.h", "ubpf/build/lib/libubpf.a"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"")
    glue = tmp_path / "hermes-glue" / "ubpf_glue"
    glue.parent.mkdir()
    glue.write_text(FAKE_GLUE.format(python=sys.executable))
    glue.chmod(0o755)
    peers = speed.find_peers(tmp_path)  # the glue is newer than its sources: not rebuilt
    assert sorted(peers) == ["uBPF interp", "uBPF jit"]
    code, mem = bytes(16), bytes(range(256)) * 4
    kernel = speed.Kernel("k", "asm", None, mem, 16, mem)
    fig = peers["uBPF jit"].run(code, mem, 3, tmp_path)
    assert (fig["compile_ns"], fig["r0"], fig["min_ns"], fig["median_ns"]) == (1000, 16, 5, 7)
    assert kernel.ok(fig["r0"], fig["slot"])
    fig = peers["uBPF interp"].run(code, mem, 3, tmp_path)
    assert not kernel.ok(fig["r0"], fig["slot"])  # it changed a byte of the slot
    broken = speed.Peer("broken", tmp_path / "missing", "jit")
    assert "error" in broken.run(code, mem, 1, tmp_path)
