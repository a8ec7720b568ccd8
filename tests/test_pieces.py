"""Big data: ``hermes.lib.pieces`` splits every kind of source by the boundary policy, and ``scan``
runs a program over the pieces on real backends with results, reduce, progress and errors."""
from __future__ import annotations

import io
import os
import pickle
import re
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import hermes
from hermes.engine import Program
from hermes.engine.asm import assemble_program
from hermes.engine.clang import compile_c, find_clang
from hermes.engine.elf import load_elf
from hermes.errors import (
    DataTooLarge,
    DeviceError,
    ExecutionFailed,
    ProgramError,
    ProgramTooLarge,
    UsageError,
)
from hermes.lib.pieces import Piece, pieces, scan, with_piece


# --- sources ------------------------------------------------------------------------------------
class ReadOnly:
    """A binary file-like object with only ``read`` (no ``readinto``), short reads included."""

    def __init__(self, data: bytes, step: int = 7):
        self._f, self._step = io.BytesIO(data), step

    def read(self, n: int) -> bytes:
        return self._f.read(min(n, self._step))


def chunked(data: bytes, sizes=(1, 5, 4096, 3, 100_000)):
    """``data`` as chunks of cycling sizes, as bytes, bytearray, memoryview and numpy arrays."""
    pos, k = 0, 0
    kinds = (bytes, bytearray, memoryview, lambda b: np.frombuffer(b, dtype=np.uint8))
    while pos < len(data):
        n = sizes[k % len(sizes)]
        yield kinds[k % len(kinds)](data[pos:pos + n])
        pos += n
        k += 1


def make_sources(data: bytes, tmp_path) -> dict:
    """One source of every kind holding ``data`` (a fresh file per call)."""
    path = tmp_path / f"src-{len(os.listdir(tmp_path))}.bin"
    path.write_bytes(data)
    return {
        "path": str(path),
        "pathlike": path,
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "numpy": np.frombuffer(data, dtype=np.uint8),
        "bytesio": io.BytesIO(data),
        "file": open(path, "rb"),  # noqa: SIM115 (closed by the test's cleanup)
        "raw-file": open(path, "rb", buffering=0),  # noqa: SIM115
        "read-only": ReadOnly(data),
        "chunks": chunked(data),
        "list": [data[i:i + 3] for i in range(0, len(data), 3)],
    }


def close_sources(sources: dict) -> None:
    for src in sources.values():
        if hasattr(src, "close"):
            src.close()


def split(source, piece_size, **policy) -> list[tuple[int, int, bytes]]:
    """(index, offset, bytes) of every piece, copied while the iterator is alive."""
    with pieces(source, piece_size, **policy) as it:
        return [(p.index, p.offset, bytes(p.data)) for p in it]


def expected(data: bytes, piece_size: int, record=None, delimiter=None):
    """The boundary policy of specs/big-data.md, written straight from its text."""
    if record:
        piece_size -= piece_size % record
    out, pos = [], 0
    while pos < len(data):
        end = pos + piece_size
        if end >= len(data):
            cut = len(data)
        elif delimiter:
            cut = data.rfind(delimiter, pos, end) + len(delimiter)
        else:
            cut = end
        out.append((len(out), pos, data[pos:cut]))
        pos = cut
    return out


KINDS = ["path", "pathlike", "bytes", "bytearray", "memoryview", "numpy", "bytesio", "file",
         "raw-file", "read-only", "chunks", "list"]

TEXT = b"".join(b"line %d %s\n" % (i, b"x" * (i % 23)) for i in range(400))
POLICIES = [({}, 100), ({"record": 16}, 100), ({"delimiter": b"\n"}, 100),
            ({"delimiter": b"\r\n"}, 64), ({}, len(TEXT)), ({}, len(TEXT) // 4)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy,piece_size", POLICIES)
def test_every_source_kind_splits_by_the_policy(kind, policy, piece_size, tmp_path):
    data = TEXT.replace(b"\n", b"\r\n") if policy.get("delimiter") == b"\r\n" else TEXT
    sources = make_sources(data, tmp_path)
    try:
        got = split(sources[kind], piece_size, **policy)
    finally:
        close_sources(sources)
    assert got == expected(data, piece_size, **policy)
    assert b"".join(b for _, _, b in got) == data


@pytest.mark.parametrize("kind", KINDS)
def test_empty_source_has_no_pieces(kind, tmp_path):
    sources = make_sources(b"", tmp_path)
    try:
        assert split(sources[kind], 8) == []
        assert split(sources[kind], 8, delimiter=b"\n") == []
    finally:
        close_sources(sources)


def test_exact_multiple_gives_full_pieces_and_no_empty_tail(tmp_path):
    data = bytes(range(256)) * 4
    for kind in ("path", "bytes", "file", "chunks"):
        sources = make_sources(data, tmp_path)
        got = split(sources[kind], 256)
        close_sources(sources)
        assert [(i, o, len(b)) for i, o, b in got] == [(i, 256 * i, 256) for i in range(4)], kind


def test_record_policy_keeps_records_whole_and_ends_with_the_partial_record():
    data = bytes(range(50))
    got = split(data, 16, record=6)  # 12-byte pieces: two records each
    assert [len(b) for _, _, b in got] == [12, 12, 12, 12, 2]
    assert all(o % 6 == 0 for _, o, _ in got)


def test_record_longer_than_a_piece_is_refused_before_any_piece():
    with pytest.raises(DataTooLarge, match="record of 9 bytes does not fit in a piece of 8") as e:
        pieces(b"x" * 100, 8, record=9)
    assert (e.value.size, e.value.limit) == (9, 8)


@pytest.mark.parametrize("kind", ["path", "bytes", "numpy", "file", "chunks"])
def test_delimited_record_longer_than_a_piece_names_its_offset_and_path(kind, tmp_path):
    data = b"ab\ncd\n" + b"z" * 30 + b"\nend\n"
    sources = make_sources(data, tmp_path)
    try:
        it = pieces(sources[kind], 10, delimiter=b"\n")
        assert bytes(next(it).data) == b"ab\ncd\n"
        with pytest.raises(DataTooLarge, match=r"record at offset 6\b.*piece size 10") as e:
            next(it)
    finally:
        close_sources(sources)
    assert e.value.offset == 6 and e.value.limit == 10
    if kind == "path":
        assert sources["path"] in str(e.value)


def test_delimiter_at_the_very_end_and_missing_at_the_end():
    assert split(b"aaa\nbbb\n", 4, delimiter=b"\n") == [(0, 0, b"aaa\n"), (1, 4, b"bbb\n")]
    assert split(b"aaa\nbb", 4, delimiter=b"\n") == [(0, 0, b"aaa\n"), (1, 4, b"bb")]
    assert split(b"aaa\nbbbb", 5, delimiter=b"\n") == [(0, 0, b"aaa\n"), (1, 4, b"bbbb")]
    assert split(b"\n" * 5, 2, delimiter=b"\n") == [(i, 2 * i, b"\n" * (2 if i < 2 else 1))
                                                    for i in range(3)]


@pytest.mark.parametrize("kind", KINDS)
def test_a_last_piece_of_exactly_piece_size_is_not_cut(kind, tmp_path):
    # the stream cannot see the end before reading past it: it must still split as memory does
    for size, want in ((5, [(0, 0, b"ab\ncd")]), (6, [(0, 0, b"ab\ncd")]),
                       (4, [(0, 0, b"ab\n"), (1, 3, b"cd")])):
        sources = make_sources(b"ab\ncd", tmp_path)
        try:
            assert split(sources[kind], size, delimiter=b"\n") == want, size
        finally:
            close_sources(sources)


def test_multibyte_delimiter_across_the_piece_end_is_not_split():
    # the "\r\n" at bytes 5..6 straddles the 6-byte limit: the piece ends after the earlier one
    assert split(b"a\r\nbb\r\ncc!", 6, delimiter=b"\r\n") == [
        (0, 0, b"a\r\n"), (1, 3, b"bb\r\n"), (2, 7, b"cc!")]


def test_numpy_uint32_array_splits_by_bytes_without_copies():
    a = np.arange(1000, dtype=np.uint32)
    got = list(pieces(a, 1024))
    assert [p.size for p in got] == [1024, 1024, 1024, 928]
    assert all(np.shares_memory(np.frombuffer(p.data, dtype=np.uint8), a) for p in got)
    assert np.array_equal(np.concatenate([np.frombuffer(p.data, dtype=np.uint32) for p in got]), a)


def test_a_strided_array_splits_as_its_bytes_in_order():
    column = np.arange(12, dtype=np.uint16).reshape(3, 4)[:, 1]
    assert b"".join(bytes(p.data) for p in pieces(column, 4)) == column.tobytes()


def test_bytes_like_pieces_are_views_of_the_source():
    buf = bytearray(b"0123456789")
    first = next(pieces(buf, 4))
    buf[0:1] = b"X"
    assert bytes(first.data) == b"X123"
    assert first.data.readonly is False and first.source is None


def test_long_delimited_search_through_a_plain_buffer():
    # a memoryview of a numpy array has no rfind: the search walks back in steps
    data = b"\n" + b"y" * 200_000 + b"\n" + b"z" * 10
    got = split(np.frombuffer(data, dtype=np.uint8), 200_005, delimiter=b"\n")
    assert [(o, len(b)) for _, o, b in got] == [(0, 200_002), (200_002, 10)]


def test_stream_pieces_stay_intact_while_later_pieces_are_read(tmp_path):
    # workers may hold many pieces at once: a later read must never overwrite an earlier piece
    data = os.urandom(100_000)
    for kind in ("file", "raw-file", "bytesio", "read-only", "chunks"):
        sources = make_sources(data, tmp_path)
        held = list(pieces(sources[kind], 4096))
        close_sources(sources)
        assert b"".join(bytes(p.data) for p in held) == data, kind


def test_pipe_with_short_reads_splits_like_memory():
    data = TEXT * 3
    r, w = os.pipe()

    def writer() -> None:
        with os.fdopen(w, "wb", buffering=0) as f:
            for i in range(0, len(data), 777):
                f.write(data[i:i + 777])

    t = threading.Thread(target=writer)
    t.start()
    with os.fdopen(r, "rb", buffering=0) as f:
        got = split(f, 1000, delimiter=b"\n")
    t.join(10)
    assert got == expected(data, 1000, delimiter=b"\n")


def test_total_is_known_for_sized_sources(tmp_path):
    sources = make_sources(TEXT, tmp_path)
    sources["bytesio"].seek(100)
    try:
        totals = {k: pieces(v, 64).total for k, v in sources.items()}
    finally:
        close_sources(sources)
    assert totals["bytesio"] == len(TEXT) - 100
    for kind in ("path", "bytes", "numpy", "file", "raw-file"):
        assert totals[kind] == len(TEXT), kind
    assert totals["chunks"] is None and totals["read-only"] is None


def _mapped(path) -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip().endswith(str(path)))


def test_path_is_mapped_not_read_and_unmapped_at_the_end(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(TEXT)
    it = pieces(path, 1000)
    first = next(it)
    assert _mapped(path) == 1
    assert first.source == str(path)
    rest = [bytes(p.data) for p in it]  # reaching the end releases the mapping ...
    assert bytes(first.data) == TEXT[:1000] and len(rest) > 1  # ... once no piece holds it
    del first
    assert _mapped(path) == 0


def test_closing_early_unmaps_the_path(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(TEXT)
    it = pieces(path, 1000)
    bytes(next(it).data)
    it.close()
    assert _mapped(path) == 0
    with pytest.raises(StopIteration):
        next(it)
    never_started = pieces(path, 1000)
    never_started.close()
    assert _mapped(path) == 0


@pytest.mark.parametrize("call,message", [
    (lambda: pieces(b"x", 0), "piece_size must be an integer in 1..4294967288, got 0"),
    (lambda: pieces(b"x", "8"), "piece_size must be an integer"),
    (lambda: pieces(b"x", True), "piece_size must be an integer"),
    (lambda: pieces(b"x", 8, record=0), "record must be an integer in 1.."),
    (lambda: pieces(b"x", 8, record=2, delimiter=b"\n"), "either record= or delimiter="),
    (lambda: pieces(b"x", 8, delimiter="\n"), "delimiter must be bytes"),
    (lambda: pieces(b"x", 8, delimiter=b""), "delimiter must not be empty"),
    (lambda: pieces(5, 8), "cannot split int"),
])
def test_bad_arguments_are_usage_errors(call, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        call()


def test_a_piece_pickles_with_a_copy_of_its_bytes(tmp_path):
    path = tmp_path / "p.bin"
    path.write_bytes(TEXT)
    with pieces(path, 1000) as it:
        piece = list(it)[1]
        back = pickle.loads(pickle.dumps(piece))
    assert (back.index, back.offset, back.source) == (1, 1000, str(path))
    assert bytes(back.data) == TEXT[1000:2000] and isinstance(back.data, memoryview)


def test_bad_stream_contents_name_what_was_wrong(tmp_path):
    with pytest.raises(UsageError, match="chunk 1 of the source must be bytes"):
        list(pieces(iter([b"ok", "text"]), 8))
    (tmp_path / "t.txt").write_text("hello")
    with open(tmp_path / "t.txt") as f, pytest.raises(UsageError, match="text mode"):
        list(pieces(ReadOnlyText(f), 8))
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        pieces(tmp_path / "missing.bin", 8)


class ReadOnlyText:
    """A text file seen through ``read`` only (no ``readinto``): its reads return ``str``."""

    def __init__(self, f):
        self.read = f.read


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000).map(lambda b: bytes(c if c % 7 else 10 for c in b)),
       piece_size=st.integers(1, 700), parts=st.integers(0, 4),
       policy=st.sampled_from(["none", "record", "delimiter"]),
       record=st.integers(1, 40), kind=st.sampled_from(["bytes", "numpy", "bytesio",
                                                        "read-only", "chunks", "path"]))
def test_property_pieces_concatenate_to_the_source(data, piece_size, parts, policy, record,
                                                   kind, tmp_path):
    if parts and data:  # sizes that divide the source (exact multiples, a whole last piece)
        piece_size = max(1, len(data) // parts)
    opts = {"none": {}, "record": {"record": min(record, piece_size)},
            "delimiter": {"delimiter": b"\n"}}[policy]
    sources = make_sources(data, tmp_path)
    try:
        got = split(sources[kind], piece_size, **opts)
    except DataTooLarge as exc:  # a line longer than a piece: the policy says so at its offset
        close_sources(sources)
        assert policy == "delimiter"
        line = data.find(b"\n", exc.offset)
        assert (line < 0 and len(data) - exc.offset > piece_size) or line - exc.offset >= piece_size
        return
    close_sources(sources)
    assert b"".join(b for _, _, b in got) == data
    assert all(0 < len(b) <= piece_size for _, _, b in got)
    assert [i for i, _, _ in got] == list(range(len(got)))
    assert all(o == sum(len(b) for _, _, b in got[:i]) for i, o, _ in got)
    for _, _, b in got[:-1]:
        if policy == "record":
            assert len(b) % opts["record"] == 0
        if policy == "delimiter":
            assert b.endswith(b"\n")
    assert got == expected(data, piece_size, **opts)


# --- with_piece ---------------------------------------------------------------------------------
def test_with_piece_keeps_class_and_attributes_of_any_error():
    piece = Piece(3, 3072, memoryview(b"x"), "/data/big.bin")
    for exc in (ProgramTooLarge(10, 8), ExecutionFailed.of_kind("budget", "budget exhausted", 7),
                DeviceError("device is closed", 19), OSError(5, "Input/output error")):
        new = with_piece(exc, piece)
        assert type(new) is type(exc)
        assert "piece 3 at offset 3072 of /data/big.bin" in str(new)
        assert (exc.strerror if isinstance(exc, OSError) else str(exc)) in str(new)
        assert (new.piece_index, new.piece_offset, new.piece_source) == (3, 3072,
                                                                         "/data/big.bin")
        assert {k: v for k, v in vars(new).items() if not k.startswith("piece_")} == vars(exc)
        assert "piece" not in str(exc)  # the original is left as it was
    assert with_piece(OSError(5, "Input/output error"), piece).errno == 5


# --- scan on real backends ----------------------------------------------------------------------
NEWLINES_C = r"""
typedef unsigned long long u64;
typedef unsigned char u8;
__attribute__((section(".text"), used))
u64 count_newlines(u8 *data, u64 len)
{
    u64 n = 0;
    for (u64 i = 0; i < len; i++)
        n += data[i] == '\n';
    return n;
}
"""

# r0 = 0, except that a piece starting with 0xff reads one byte past its input (a fault)
FAULT_AT_FF = """
    ldxb r3, [r1]
    jne r3, 255, ok
    mov r4, r1
    add r4, r2
    ldxb r0, [r4]
ok: mov r0, 0
    exit
"""

BACKENDS = ["cpu", "emu"]


@pytest.fixture(scope="module")
def newlines(tmp_path_factory) -> Program:
    if find_clang() is None:
        pytest.skip("clang not found: apt-get install clang")
    d = tmp_path_factory.mktemp("c")
    (d / "nl.c").write_text(NEWLINES_C)
    return load_elf(compile_c(d / "nl.c", d / "nl.o"))


@pytest.fixture(params=BACKENDS)
def device(request):
    dev = hermes.open(request.param)
    yield dev
    dev.close()


@pytest.fixture(scope="module")
def big_text() -> bytes:
    rng = np.random.default_rng(13)
    data = rng.integers(32, 127, size=(3 << 20) + 12345, dtype=np.uint8)
    data[rng.integers(0, data.size, size=40_000)] = 10
    return data.tobytes()


def test_scan_counts_newlines_like_python(device, newlines, big_text, tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(big_text)
    want = big_text.count(b"\n")
    for source in (str(path), big_text, np.frombuffer(big_text, dtype=np.uint8)):
        results = list(scan(device, newlines, source, read=0))
        assert [r.index for r in results] == list(range(4))
        assert [r.offset for r in results] == [i << 20 for i in range(4)]
        assert sum(r.return_value for r in results) == want
    with open(path, "rb") as f:
        total = scan(device, newlines, f, piece_size=200_000, delimiter=b"\n", read=0,
                     reduce=lambda acc, r: acc + r.return_value, initial=0)
    assert total == want


def test_scan_results_match_a_python_count_per_piece(device, newlines, big_text):
    results = list(scan(device, newlines, big_text, piece_size=300_000, delimiter=b"\n",
                        read=0, workers=2))
    want = [(i, o, b.count(b"\n")) for i, o, b in expected(big_text, 300_000,
                                                          delimiter=b"\n")]
    assert [(r.index, r.offset, r.return_value) for r in results] == want
    assert all(r.data == b"" for r in results)


def test_scan_reports_progress_after_each_piece(device, newlines, big_text, tmp_path):
    seen = []
    scan(device, newlines, big_text[:1 << 20], piece_size=256 << 10, read=0,
         progress=lambda done, total: seen.append((done, total)),
         reduce=lambda acc, r: acc + r.return_value, initial=0)
    assert seen == [(k << 18, 1 << 20) for k in range(1, 5)]
    seen.clear()
    list(scan(device, newlines, iter([big_text[:100_000]]), piece_size=64 << 10, read=0,
              progress=lambda done, total: seen.append((done, total))))
    assert seen == [(65536, None), (100_000, None)]


def test_scan_reduce_without_initial_and_on_an_empty_source(device, newlines):
    first = scan(device, newlines, b"a\nb\n", read=0, reduce=lambda acc, r: acc)
    assert first.index == 0 and first.return_value == 2
    assert device.scan(newlines, b"a\nb\n" * 3, piece_size=4, delimiter=b"\n", read=0,
                       reduce=lambda acc, r: acc + r.return_value, initial=0) == 6
    assert scan(device, newlines, b"", reduce=lambda acc, r: acc + 1, initial=0) == 0
    assert list(scan(device, newlines, b"")) == []
    with pytest.raises(UsageError, match="empty source with reduce= needs initial="):
        scan(device, newlines, b"", reduce=lambda acc, r: acc)


def test_scan_output_per_piece_is_the_piece(device):
    # a program that changes nothing returns each piece's bytes as its output
    prog = assemble_program("mov r0, r2\nexit")
    data = os.urandom(50_000)
    results = list(scan(device, prog, data, piece_size=8192))
    assert b"".join(bytes(r.data) for r in results) == data
    assert [r.return_value for r in results] == [len(b) for _, _, b in expected(data, 8192)]


def test_a_faulting_piece_names_its_index_offset_and_path(device, tmp_path):
    data = bytearray(10 * 4096)
    data[6 * 4096] = 0xFF
    path = tmp_path / "faulty.bin"
    path.write_bytes(data)
    prog = assemble_program(FAULT_AT_FF)
    results = scan(device, prog, str(path), piece_size=4096, read=0)
    got = [next(results) for _ in range(6)]
    assert [r.offset for r in got] == [4096 * i for i in range(6)]
    with pytest.raises(ExecutionFailed) as e:
        next(results)
    exc = e.value
    assert exc.kind == "out_of_bounds"
    assert (exc.piece_index, exc.piece_offset, exc.piece_source) == (6, 24576, str(path))
    assert f"piece 6 at offset 24576 of {path}" in str(exc)
    with pytest.raises(ExecutionFailed, match="piece 6 at offset 24576:"):
        scan(device, prog, bytes(data), piece_size=4096, read=0,
             reduce=lambda acc, r: acc, initial=0)


def test_a_too_long_line_fails_the_scan_at_its_offset(device, newlines):
    data = b"short\n" * 10 + b"L" * 5000 + b"\n"
    results = scan(device, newlines, data, piece_size=1024, delimiter=b"\n", read=0)
    assert next(results).return_value == 10
    with pytest.raises(DataTooLarge, match="record at offset 60 is longer than the piece size"):
        next(results)


def test_scan_checks_its_arguments_before_running(device, newlines):
    slot = device.data_slot_size
    with pytest.raises(DataTooLarge, match=f"piece_size {slot + 8} is larger than the device's "
                                           f"data slot \\({slot} bytes\\)"):
        scan(device, newlines, b"x", piece_size=slot + 8)
    with pytest.raises(DataTooLarge, match="larger than the window size \\(4096 bytes\\)"):
        scan(device, newlines, b"x", piece_size=8192, size=4096)
    with pytest.raises(UsageError, match="progress must be callable"):
        scan(device, newlines, b"x", progress=3)
    with pytest.raises(UsageError, match="reduce must be callable"):
        scan(device, newlines, b"x", reduce="sum")
    with pytest.raises(UsageError, match="cannot split float"):
        scan(device, newlines, 1.5)


def test_scan_passes_args_and_window_size(device):
    # r0 = arg0 + the byte at the last position of the window (zero past each piece's input)
    prog = assemble_program("""
        mov r4, r1
        add r4, 4095
        ldxb r0, [r4]
        add r0, r3
        exit
    """)
    results = list(scan(device, prog, b"\x01" * 10_000, size=4096, args=(40,), read=0))
    assert [r.return_value for r in results] == [41, 41, 40]


def test_a_rejected_program_fails_the_call_and_releases_the_source(device, tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(10_000))
    with pytest.raises(ProgramError) as e:
        scan(device, assemble_program("mov r0, r6\nexit"), path, piece_size=4096)
    assert not hasattr(e.value, "piece_index")
    assert _mapped(path) == 0


def test_a_path_of_size_zero_is_read_as_a_stream():
    # /proc files say size 0 and still have contents; an empty file has none
    with open("/proc/self/status", "rb") as f:
        want = f.read()
    got = b"".join(bytes(p.data) for p in pieces("/proc/self/status", 64))
    assert got.split(b"\n")[0] == want.split(b"\n")[0] and len(got) > 64
