"""Counts the lines of a multi-GiB file on a dask.distributed cluster, one Hermes device per worker.

The dataset is made on the fly as a sparse file (``--gib`` GiB of holes with a few lines of text
every few MiB), so it costs almost no disk and is removed at the end. Each worker opens its own
``emu`` device (``hermes.dask.HermesPlugin``), maps its own slices of the file, and runs
``examples/newlines.c`` on each 1 MiB piece; the counts are summed in source order.

    python examples/dask_scan.py                               # a LocalCluster of 2 processes
    python examples/dask_scan.py --scheduler tcp://host:8786   # an existing cluster
    python examples/dask_scan.py --gib 8 --piece-mib 4

With ``--scheduler``, the file must sit at the same path on every worker (a shared file system)
and ``--dir`` must name such a folder.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import distributed

import hermes
import hermes.dask
from hermes.engine.clang import compile_c
from hermes.engine.elf import load_elf

HERE = Path(__file__).resolve().parent
GIB = 1 << 30
MIB = 1 << 20
#: One short record written every STRIDE bytes; everything between is a hole (zeros).
STRIDE = 3 * MIB + 12345
RECORD = b"2026-12-01 hermes scanned this line\nand this one\n"


def make_dataset(path: str, size: int) -> int:
    """A sparse file of ``size`` bytes with RECORD every STRIDE bytes; its newline count."""
    count = 0
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in range(0, size - len(RECORD), STRIDE):
            f.seek(offset)
            f.write(RECORD)
            count += RECORD.count(b"\n")
    return count


def main() -> None:
    """Build the dataset, scan it on the cluster, check the count."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=4.0, help="dataset size in GiB (default 4)")
    ap.add_argument("--piece-mib", type=int, default=1, help="piece size in MiB (default 1)")
    ap.add_argument("--scheduler", help="address of an existing cluster, e.g. tcp://host:8786")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    ap.add_argument("--dir", help="folder for the dataset (shared by the workers)")
    opts = ap.parse_args()
    piece = opts.piece_mib * MIB
    with tempfile.TemporaryDirectory(dir=opts.dir) as tmp:
        program = load_elf(compile_c(HERE / "newlines.c", Path(tmp) / "n.o"))
        path = os.path.join(tmp, "dataset.log")
        want = make_dataset(path, int(opts.gib * GIB))
        print(f"dataset: {path}, {os.path.getsize(path) / GIB:.1f} GiB "
              f"({os.stat(path).st_blocks * 512 / MIB:.1f} MiB on disk), {want} lines")
        cluster = None
        if opts.scheduler:
            client = distributed.Client(opts.scheduler)
        else:
            cluster = distributed.LocalCluster(n_workers=opts.workers, threads_per_worker=1,
                                               host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                               silence_logs=logging.ERROR)
            client = distributed.Client(cluster)
        try:
            # every worker opens one emulated device whose data slot holds one piece
            client.register_plugin(hermes.dask.HermesPlugin(
                [("emu", {"engines": 1, "data_slot_size": piece})]))
            t0 = time.perf_counter()
            lines = hermes.dask.map(program, path, client=client, piece_size=piece,
                                    read=0, progress=True,
                                    reduce=lambda acc, r: acc + r.return_value, initial=0)
            secs = time.perf_counter() - t0
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        size = os.path.getsize(path)
        print(f"{lines} lines in {secs:.1f} s ({size / secs / 1e9:.2f} GB/s), "
              f"{'as expected' if lines == want else f'EXPECTED {want}'}")
        if lines != want:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
