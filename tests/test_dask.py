"""hermes.dask on a real LocalCluster of worker processes: devices as resources, maps, failures."""
from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

distributed = pytest.importorskip("distributed")
np = pytest.importorskip("numpy")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402

import hermes  # noqa: E402
import hermes.dask as hd  # noqa: E402
from hermes.engine.asm import assemble_program  # noqa: E402
from hermes.errors import DataTooLarge, ExecutionFailed, UsageError  # noqa: E402
from hermes.lib.pieces import pieces  # noqa: E402

SLOT = 64 << 10  # small slots: a few MiB of data make dozens of pieces
DEVICES = [("emu", {"engines": 2, "data_slot_size": SLOT}),
           ("cpu", {"engines": 1, "data_slot_size": SLOT})]

#: r0 = the number of '\n' in the input; then r3 (argument 0) rounds of a spin loop, so a test
#: can make each piece take long enough to kill a worker in the middle of a job. Each round
#: divides by a value the previous round made and stores the sum's low byte to the input's first
#: byte: no compiler can drop or shorten the rounds (a loop with no observable effect, it may).
NEWLINES = """
    mov r0, 0
    mov r6, 0
next:
    jge r6, r2, spin
    mov r7, r1
    add r7, r6
    ldxb r8, [r7]
    jne r8, 10, skip
    add r0, 1
skip:
    add r6, 1
    ja next
spin:
    mov r9, 1
round:
    jeq r3, 0, done
    mov r4, -1
    mov r5, r9
    or r5, 1
    div r4, r5
    add r9, r4
    jeq r2, 0, counted
    stxb [r1], r9
counted:
    sub r3, 1
    ja round
done:
    exit
"""

#: Faults (a load past the window) on a piece whose first byte is 'X'.
FAULT_ON_X = """
    ldxb r3, [r1]
    jne r3, 88, ok
    add r1, r2
    ldxb r3, [r1+8]
ok:
    mov r0, 0
    exit
"""


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                       silence_logs=50)
    c = distributed.Client(cluster)
    try:
        c.register_plugin(hd.HermesPlugin(DEVICES))
        yield c
    finally:
        c.close()
        cluster.close()


@pytest.fixture(scope="module")
def program():
    return assemble_program(NEWLINES)


@pytest.fixture(scope="module")
def local():
    dev = hermes.open("emu", engines=2, data_slot_size=SLOT)
    yield dev
    dev.close()


def lines(n: int, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 300, n)
    return b"".join(b"r" * int(k) + b"\n" for k in lengths)


@pytest.fixture(scope="module")
def textfile(tmp_path_factory):
    path = tmp_path_factory.mktemp("dask") / "lines.txt"
    path.write_bytes(lines(20_000))  # about 3 MiB: ~45 pieces of 64 KiB
    return path


def local_run(dev, program, source, piece_size=SLOT, *, record=None, delimiter=None, **run):
    """The same pieces run one by one on a local device: what the cluster must give back."""
    out = []
    for p in pieces(source, piece_size, record=record, delimiter=delimiter):
        out.append(dataclasses.replace(dev.run(program, p.data, **run), offset=p.offset,
                                       index=p.index))
    return out


def summary(results) -> list:
    return [(r.index, r.offset, r.return_value, bytes(r.data)) for r in results]


def workers_of(client) -> list[str]:
    return sorted(client.scheduler_info(n_workers=-1)["workers"])


# --- errors cross the process boundary -----------------------------------------------------------
ERRORS = """
import pickle, sys
from hermes.errors import (BudgetExceeded, DataTooLarge, ExecutionFailed, ProgramRejected,
                           ProgramTooLarge, RunTimeout)
assert "distributed" not in sys.modules  # its tblib would pickle exceptions its own way
for exc in [ExecutionFailed.of_kind("out_of_bounds", "load out of bounds", 3, address=16, size=1),
            BudgetExceeded("budget", "budget exhausted", 7, instructions=100),
            RunTimeout("run did not finish", 1.5, pc=2), ProgramTooLarge(9000, 4096),
            ProgramRejected("bad opcode", 4, 0x105), DataTooLarge("too big", 10, 8)]:
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc), (exc, back)
    assert back.__dict__ == exc.__dict__, (back.__dict__, exc.__dict__)
print("ok")
"""


def test_every_error_survives_plain_pickling():
    """Pickle (multiprocessing, any process pool) carries class, message and attributes."""
    out = subprocess.run([sys.executable, "-c", ERRORS], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_a_lost_device_error_survives_pickling():
    exc = hd.DeviceLost("gone", errno.ENODEV, worker="tcp://w", spec="emu")
    back = pickle.loads(pickle.dumps(exc))
    assert (type(back), str(back), back.__dict__) == (type(exc), str(exc), exc.__dict__)


# --- the plugin ----------------------------------------------------------------------------------
def test_each_worker_offers_its_devices_engines_as_resources(client):
    infos = client.scheduler_info(n_workers=-1)["workers"]
    assert len(infos) == 2
    for w in infos.values():
        assert w["resources"] == {"hermes-emu": 2, "hermes-cpu": 1}


def test_device_configs_are_checked_on_the_client():
    assert hd.device_configs("vfio-user:/s")[0].resource == "hermes-vfio-user"
    assert hd.device_configs([{"spec": "emu", "resource": "hermes-fast"}])[0].resource \
        == "hermes-fast"
    for bad in (3, [""], [{"spec": "emu", "engines": 2}], [("emu", {}, 1)],
                [{"spec": "emu", "resource": "gpu"}]):
        with pytest.raises(UsageError):
            hd.HermesPlugin(bad)


def test_devices_come_from_each_workers_dask_config():
    """With no devices given, each worker opens what its own dask configuration lists (here
    the environment of its process, as a host's YAML file or DASK_HERMES__DEVICES would)."""
    env = {"DASK_HERMES__DEVICES": '[{"spec": "cpu", "options": {"engines": 3}}]'}
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                  silence_logs=50,
                                  env=env) as cluster, distributed.Client(cluster) as c:
        c.register_plugin(hd.HermesPlugin())
        (info,) = c.scheduler_info(n_workers=-1)["workers"].values()
        assert info["resources"] == {"hermes-cpu": 3}
        total = hd.map(assemble_program(NEWLINES), [dask.delayed(b"a\nb\n")],
                       client=c, reduce=lambda a, r: a + r.return_value, initial=0)
        assert total == 2


# --- maps ----------------------------------------------------------------------------------------
def test_file_map_equals_a_local_run(client, program, local, textfile):
    got = hd.map(program, textfile, client=client, delimiter=b"\n", resource="hermes-emu")
    want = local_run(local, program, textfile, delimiter=b"\n")
    assert len(want) > 40
    assert summary(got) == summary(want)
    assert [r.return_value for r in got] == [bytes(r.data).count(b"\n") for r in want]
    assert sum(r.return_value for r in got) == textfile.read_bytes().count(b"\n")


def test_one_worker_gives_the_same_results(client, program, local, textfile):
    one = workers_of(client)[:1]
    got = hd.map(program, textfile, client=client, delimiter=b"\n", workers=one, read=0,
                 resource="hermes-emu")
    want = local_run(local, program, textfile, delimiter=b"\n", read=0)
    assert summary(got) == summary(want)


def test_reduce_and_progress(client, program, textfile):
    seen = []
    total = hd.map(program, textfile, client=client, record=100, read=0, batch=4,
                   resource="hermes-cpu", reduce=lambda acc, r: acc + r.return_value,
                   initial=0, progress=lambda done, whole: seen.append((done, whole)))
    size = textfile.stat().st_size
    assert total == textfile.read_bytes().count(b"\n")
    assert seen[-1] == (size, size) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_dasks_own_progress_bar(client, program, textfile, capsys):
    total = hd.map(program, textfile, client=client, read=0, resource="hermes-emu",
                   reduce=lambda acc, r: acc + r.return_value, initial=0, progress=True)
    assert total == textfile.read_bytes().count(b"\n")
    assert "100% Completed" in capsys.readouterr().out


def test_several_files_one_ordered_result(client, program, tmp_path):
    paths = []
    for k in range(3):
        p = tmp_path / f"part{k}.txt"
        p.write_bytes(lines(500 * (k + 1), seed=k))
        paths.append(p)
    got = hd.map(program, paths, client=client, piece_size=4096, read=0,
                 resource="hermes-emu")
    assert [r.index for r in got] == list(range(len(got)))
    assert sum(r.return_value for r in got) == sum(p.read_bytes().count(b"\n") for p in paths)


def test_bag_array_and_delayed_blocks(client, program, local):
    chunks = [lines(800, seed=k) for k in range(4)]
    whole = b"".join(chunks)
    bag = db.from_sequence(chunks, npartitions=2)
    got = hd.map(program, bag, client=client, delimiter=b"\n", piece_size=8192,
                 resource="hermes-emu")
    assert sum(r.return_value for r in got) == whole.count(b"\n")
    assert [r.index for r in got] == list(range(len(got)))
    # an array split into blocks: offsets are byte offsets in the whole array
    arr = np.frombuffer(whole[: len(whole) // 4 * 4], dtype=np.uint32)
    darr = da.from_array(arr, chunks=arr.size // 3)
    got = hd.map(program, darr, client=client, record=4, piece_size=10_000,
                 resource="hermes-emu")
    blocks = [b.nbytes for b in np.array_split(arr, np.cumsum(darr.chunks[0])[:-1])]
    want_offsets, start = [], 0
    for nbytes in blocks:
        want_offsets += list(range(start, start + nbytes, 10_000 - 10_000 % 4))
        start += nbytes
    assert [r.offset for r in got] == want_offsets
    assert sum(r.return_value for r in got) == arr.tobytes().count(b"\n")
    delayed = [dask.delayed(bytes)(c) for c in chunks]
    got = hd.map(program, delayed, client=client, delimiter=b"\n", piece_size=SLOT, read=0,
                 resource="hermes-emu")
    want = local_run(local, program, whole, delimiter=b"\n", read=0)
    assert sum(r.return_value for r in got) == sum(r.return_value for r in want)


def test_the_program_is_shipped_once_and_prepared_once_per_device(client, program, textfile):
    for _ in range(2):
        hd.map(program, textfile, client=client, read=0, resource="hermes-emu")
    keys = client.run(_cached_programs)
    code_key = __import__("hashlib").sha256(hermes.lib.program_bytes(program)).hexdigest()
    for per_worker in keys.values():
        assert per_worker["emu"] == [code_key]


def _cached_programs(dask_worker=None):
    plugin = dask_worker.plugins[hd.PLUGIN_NAME]
    return {d.config.spec: list(d.programs) for d in plugin.devices}


# --- failures ------------------------------------------------------------------------------------
def test_a_faulting_piece_names_its_offset_file_and_fault(client, tmp_path):
    data = bytearray(b"a" * (10 * 4096))
    data[3 * 4096] = ord("X")
    path = tmp_path / "fault.bin"
    path.write_bytes(bytes(data))
    with pytest.raises(ExecutionFailed) as info:
        hd.map(assemble_program(FAULT_ON_X), path, client=client, piece_size=4096,
               resource="hermes-emu")
    exc = info.value
    assert exc.kind == "out_of_bounds"
    assert (exc.piece_index, exc.piece_offset, exc.piece_source) == (3, 3 * 4096, str(path))
    assert f"piece 3 at offset {3 * 4096} of {path}" in str(exc)


def test_a_job_that_makes_no_progress_fails_after_its_stall_timeout(client, program, tmp_path):
    path = tmp_path / "one.txt"
    path.write_bytes(b"a\n" * 100)
    t0 = time.monotonic()
    with pytest.raises(hermes.DeviceTimeout, match="no piece finished within 1.0 s"):
        hd.map(program, path, client=client, resource="hermes-cpu", args=(1 << 62,),
               budget=1 << 63, timeout=4.0, stall_timeout=1.0)  # the run itself stops after 4 s
    assert time.monotonic() - t0 < 4
    time.sleep(4.5 - (time.monotonic() - t0))  # the cpu devices are free again


def test_bad_input_is_refused_before_anything_runs(client, program, tmp_path):
    with pytest.raises(UsageError, match="source must be"):
        hd.map(program, 42, client=client, resource="hermes-emu")
    with pytest.raises(UsageError, match="no worker offers 'hermes-gpu'"):
        hd.map(program, tmp_path, client=client, resource="hermes-gpu")
    with pytest.raises(UsageError, match="several kinds"):
        hd.map(program, tmp_path, client=client)
    with pytest.raises(UsageError, match="unknown option"):
        hd.map(program, tmp_path, client=client, resource="hermes-emu", engines=3)
    with pytest.raises(UsageError, match="block 1: an element of the collection must be bytes"):
        hd.map(program, db.from_sequence([b"a\n", "text"], npartitions=2), client=client,
               resource="hermes-emu")
    with pytest.raises(DataTooLarge, match="block 0: the record at offset 0"):
        hd.map(program, [dask.delayed(b"x" * 5000)], client=client, piece_size=4096,
               delimiter=b"\n", resource="hermes-emu")
    long_line = tmp_path / "long.txt"
    long_line.write_bytes(b"x" * 5000 + b"\n")
    with pytest.raises(DataTooLarge, match="offset 0"):
        hd.map(program, long_line, client=client, piece_size=4096, delimiter=b"\n",
               resource="hermes-emu")


def test_killing_a_worker_mid_job_gives_the_local_result(client, program, local, textfile):
    """The dead worker's pieces run again elsewhere; each piece is counted once."""
    spin = (5_000_000,)  # each piece spins a while, so the job is still running at the kill
    want = local_run(local, program, textfile, delimiter=b"\n", read=0)
    job = hd.submit(program, textfile, client=client, delimiter=b"\n", read=0, args=spin,
                    resource="hermes-emu", batch=2)
    victim = workers_of(client)[0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    deadline = time.monotonic() + 30
    while sum(f.done() for f in job.futures) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    done_at_kill = sum(f.done() for f in job.futures)
    os.kill(pid, signal.SIGKILL)
    got = list(job.results())
    assert done_at_kill < len(job.futures)
    assert [(r.index, r.offset, r.return_value) for r in got] == \
        [(r.index, r.offset, r.return_value) for r in want]
    # the nanny restarts the worker; it offers its devices once the plugin has opened them
    deadline = time.monotonic() + 60
    while [w["resources"] for w in client.scheduler_info(n_workers=-1)["workers"].values()] \
            != [{"hermes-emu": 2, "hermes-cpu": 1}] * 2:
        assert time.monotonic() < deadline, "the killed worker did not come back"
        time.sleep(0.1)


def test_a_vanished_device_is_reported_and_its_pieces_run_elsewhere(client, program, local,
                                                                   textfile):
    lost, other = workers_of(client)
    try:
        job = hd.submit(program, textfile, client=client, delimiter=b"\n", read=0,
                        args=(5_000_000,), workers=[lost], resource="hermes-emu", batch=2)
        deadline = time.monotonic() + 30
        while not any(f.done() for f in job.futures) and time.monotonic() < deadline:
            time.sleep(0.05)
        client.run(_close_emu, workers=[lost])
        with pytest.raises(hd.DeviceLost) as info:
            list(job.results())  # this job may use only that worker: nowhere to go
        exc = info.value  # named: the worker, the device, the piece, why
        assert exc.worker == lost and exc.errno == errno.ENODEV
        assert exc.spec == "emu" and str(textfile) in str(exc)
        assert f"worker {lost}" in str(exc) and "device 'emu' stopped working" in str(exc)
        # the worker no longer offers it; a job over both workers runs wholly on the other
        deadline = time.monotonic() + 10
        while client.scheduler_info(n_workers=-1)["workers"][lost]["resources"]["hermes-emu"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        got = hd.map(program, textfile, client=client, delimiter=b"\n", read=0,
                     resource="hermes-emu", batch=2)
        assert summary(got) == summary(local_run(local, program, textfile, delimiter=b"\n",
                                                 read=0))
        with pytest.raises(UsageError, match="no worker offers 'hermes-emu'"):
            hd.map(program, textfile, client=client, workers=[lost], resource="hermes-emu")
    finally:
        client.register_plugin(hd.HermesPlugin(DEVICES))  # every worker opens its devices again


def _close_emu(dask_worker=None):
    # the device goes away underneath the plugin, as an unplugged or killed one does
    for d in dask_worker.plugins[hd.PLUGIN_NAME].devices:
        if d.config.spec == "emu":
            d.device.close()


def test_a_killed_vfio_user_server_is_a_lost_device(program, textfile):
    """The device of a worker is a `hermes serve` process; it is killed in the middle of a job."""
    from tests.vfio_devices import ServerProcess
    folder = tempfile.mkdtemp(prefix="hd-", dir="/tmp")  # short: a socket path has 108 bytes
    sock = os.path.join(folder, "hermes.sock")
    spec = f"vfio-user:{sock}"
    server = ServerProcess.with_options(sock, engines=1, data_slot_size=SLOT)
    try:
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                      silence_logs=50) as cluster, \
                distributed.Client(cluster) as c:
            c.register_plugin(hd.HermesPlugin([(spec, {"timeout": 5})]))
            job = hd.submit(program, textfile, client=c, delimiter=b"\n", read=0,
                            args=(2_000_000,), batch=2)
            deadline = time.monotonic() + 30
            while not any(f.done() for f in job.futures) and time.monotonic() < deadline:
                time.sleep(0.05)
            server.stop(signal.SIGKILL)
            t0 = time.monotonic()
            with pytest.raises(hd.DeviceLost) as info:
                list(job.results())
            assert time.monotonic() - t0 < 15
            exc = info.value
            assert exc.spec == spec and f"device {spec!r} stopped working" in str(exc)
            assert str(textfile) in str(exc)
            deadline = time.monotonic() + 10
            while any(w["resources"]["hermes-vfio-user"]
                      for w in c.scheduler_info(n_workers=-1)["workers"].values()):
                assert time.monotonic() < deadline, "the lost device is still offered"
                time.sleep(0.1)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
