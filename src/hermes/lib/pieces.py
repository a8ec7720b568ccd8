"""Big data: split a source larger than a data slot into pieces, and scan a program over them."""
from __future__ import annotations

import collections
import dataclasses
import functools
import mmap
import os
import stat
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import DataTooLarge, UsageError
from .api import check_buffer, check_int

#: Bytes examined per step when a delimiter is searched backwards in a buffer that has no
#: ``rfind`` of its own (a memoryview of a numpy array): small, since records are usually short.
_SEARCH_STEP = 64 << 10
#: Largest piece size accepted (a piece is one run's input; slots are 32-bit sized).
MAX_PIECE_SIZE = 0xFFFF_FFF8

#: How ``scan`` describes its progress: ``progress(done_bytes, total_bytes or None)``.
Progress = Callable[[int, "int | None"], Any]


@dataclass(frozen=True)
class Piece:
    """One piece of a source: its number, its byte offset in the source, its bytes, and the
    path (or file name) it came from, ``None`` for in-memory sources."""

    index: int
    offset: int
    data: memoryview
    source: str | None = None

    @property
    def size(self) -> int:
        """Length of the piece in bytes."""
        return self.data.nbytes

    def __repr__(self) -> str:
        where = f", source={self.source!r}" if self.source is not None else ""
        return f"Piece(index={self.index}, offset={self.offset}, {self.size} bytes{where})"

    def __reduce__(self) -> tuple:
        # A memoryview cannot be pickled: a piece sent to another process (a dask worker)
        # carries a copy of its bytes.
        return _unpickle_piece, (self.index, self.offset, self.data.tobytes(), self.source)


def _unpickle_piece(index: int, offset: int, data: bytes, source: str | None) -> Piece:
    return Piece(index, offset, memoryview(data), source)


def _where(offset: int, source: str | None) -> str:
    return f"offset {offset}" + (f" of {source}" if source is not None else "")


class Pieces(Iterator[Piece]):
    """The pieces of one source, in order (what ``pieces()`` returns).

    ``total`` is the source's length in bytes when it is known before the end (a path, a
    bytes-like, a seekable file), else ``None``. Closing the iterator (``close()``, ``with``, or
    reaching the end) releases the source: a path's memory map is closed once no piece of it is
    referenced any more, and a file this iterator opened is closed. A file object or iterator
    the caller passed is never closed by it.
    """

    def __init__(self, source: object, piece_size: int, *, record: int | None = None,
                 delimiter: bytes | bytearray | memoryview | None = None):
        check_int("piece_size", piece_size, 1, MAX_PIECE_SIZE)
        if record is not None and delimiter is not None:
            raise UsageError("give either record= or delimiter=, not both")
        if record is not None:
            check_int("record", record, 1, MAX_PIECE_SIZE)
            if record > piece_size:
                raise DataTooLarge(f"a record of {record} bytes does not fit in a piece of "
                                   f"{piece_size} bytes", size=record, limit=piece_size)
            piece_size -= piece_size % record  # pieces hold whole records only
        if delimiter is not None:
            if isinstance(delimiter, str) or not isinstance(delimiter,
                                                            (bytes, bytearray, memoryview)):
                raise UsageError(f"delimiter must be bytes such as b'\\n', not "
                                 f"{type(delimiter).__name__}")
            delimiter = bytes(delimiter)
            if not delimiter:
                raise UsageError("delimiter must not be empty")
        self.piece_size = piece_size
        self.record = record
        self.delimiter: bytes | None = delimiter
        self.source: str | None = None
        self.total: int | None = None
        self._map: mmap.mmap | None = None
        self._file: Any = None       # a file this iterator opened (closed with it)
        self._closed = False
        self._gen = self._open(source)

    # --- opening a source ------------------------------------------------------------------
    def _open(self, source: object) -> Generator[Piece, None, None]:
        if isinstance(source, (str, os.PathLike)):
            return self._open_path(source)
        if isinstance(source, (bytes, bytearray, memoryview, mmap.mmap)) or _has_buffer(source):
            view = check_buffer(source, "source")
            self.total = view.nbytes
            # bytes, bytearray and mmap search natively; other buffers are searched by steps
            finder = source if isinstance(source, (bytes, bytearray, mmap.mmap)) else None
            return self._split_view(view, finder)
        if hasattr(source, "readinto") or hasattr(source, "read"):
            name = getattr(source, "name", None)
            self.source = os.fspath(name) if isinstance(name, (str, os.PathLike)) else None
            self.total = _remaining(source)
            return self._split_stream(_file_filler(source, self.source))
        if isinstance(source, Iterable):
            return self._split_stream(_chunk_filler(iter(source)))
        raise UsageError(f"cannot split {type(source).__name__}: a source is a path, a "
                         f"bytes-like or numpy array, a binary file object, or an iterator of "
                         f"bytes-like chunks")

    def _open_path(self, path: str | os.PathLike) -> Generator[Piece, None, None]:
        self.source = os.fspath(path)
        f = open(path, "rb")  # noqa: SIM115 (closed by close())
        try:
            st = os.fstat(f.fileno())
            # A pipe or device, or a file of size 0 (empty, which mmap refuses, or a /proc file
            # whose size says nothing): read it as a stream.
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                self._file = f
                return self._split_stream(_file_filler(f, self.source))
            self.total = st.st_size
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            f.close()
            raise
        f.close()  # the mapping keeps its own reference to the file
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            self._map.madvise(mmap.MADV_SEQUENTIAL)
        return self._split_view(None, self._map)

    # --- splitting ---------------------------------------------------------------------------
    def _split_view(self, view: memoryview | None, finder: Any) -> Generator[Piece, None, None]:
        """Zero-copy pieces of a contiguous source (slices of ``view``, or of the path's
        mapping: a view made here, so an iterator closed before it starts holds none)."""
        try:
            if view is None:
                view = memoryview(self._map)  # type: ignore[arg-type]
            n, pos, index, size = view.nbytes, 0, 0, self.piece_size
            while pos < n:
                end = pos + size
                if end >= n:
                    cut = n
                elif self.delimiter is None:
                    cut = end
                else:
                    cut = _rfind(view, finder, self.delimiter, pos, end)
                    if cut < 0:
                        raise self._too_long(pos)
                    cut += len(self.delimiter)
                yield Piece(index, pos, view[pos:cut], self.source)
                index += 1
                pos = cut
        finally:
            del view
            self._release()

    def _split_stream(self, fill: Callable[[memoryview], int]) -> Generator[Piece, None, None]:
        """Pieces of a stream: each piece is a new buffer, so pieces handed to concurrent
        workers are never overwritten by later reads."""
        try:
            size, offset, index = self.piece_size, 0, 0
            # One byte more than a piece tells "exactly one piece left" from "more follows",
            # so a stream splits exactly as the same bytes in memory do.
            buf, filled = bytearray(size + 1), 0
            while True:
                filled = _fill(fill, buf, filled)
                if filled == 0:
                    return
                if filled <= size:  # the end of the source: the rest is the last piece
                    yield Piece(index, offset, memoryview(buf)[:filled], self.source)
                    return
                if self.delimiter is None:
                    cut = size
                else:
                    cut = buf.rfind(self.delimiter, 0, size)
                    if cut < 0:
                        raise self._too_long(offset)
                    cut += len(self.delimiter)
                nxt = bytearray(size + 1)
                tail = filled - cut
                nxt[:tail] = memoryview(buf)[cut:filled]
                yield Piece(index, offset, memoryview(buf)[:cut], self.source)
                buf, filled = nxt, tail
                index += 1
                offset += cut
        finally:
            self._release()

    def _too_long(self, offset: int) -> DataTooLarge:
        exc = DataTooLarge(f"the record at {_where(offset, self.source)} is longer than the "
                           f"piece size {self.piece_size}: no delimiter {self.delimiter!r} in "
                           f"bytes {offset}..{offset + self.piece_size}",
                           limit=self.piece_size)
        exc.offset = offset  # type: ignore[attr-defined]
        return exc

    # --- iterator protocol -----------------------------------------------------------------
    def __iter__(self) -> Pieces:
        return self

    def __next__(self) -> Piece:
        return next(self._gen)

    def close(self) -> None:
        """Stop early and release the source (idempotent)."""
        self._gen.close()
        self._release()

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # pieces still in use: the mapping goes with the last of them
                pass
            self._map = None

    def __enter__(self) -> Pieces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:  # interpreter shutdown: nothing left to release into
            pass


def pieces(source: object, piece_size: int, *, record: int | None = None,
           delimiter: bytes | None = None) -> Pieces:
    """Split ``source`` into pieces of at most ``piece_size`` bytes, in order.

    ``source`` is a path (memory-mapped read-only, never read whole), a bytes-like or numpy
    array (pieces are zero-copy slices; lengths in bytes), a binary file object, or an iterable
    of bytes-like chunks (re-chunked). Boundary policy (``specs/big-data.md``): by default fixed
    ``piece_size`` pieces, the last shorter; ``record=N``: every piece but the last is a
    multiple of N bytes; ``delimiter=b"\\n"``: every piece but the last ends just after the last
    delimiter it contains, and a record longer than ``piece_size`` is ``DataTooLarge`` naming
    its offset. Concatenating the pieces gives the source back.
    """
    return Pieces(source, piece_size, record=record, delimiter=delimiter)


def _has_buffer(obj: object) -> bool:
    try:
        memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def _rfind(view: memoryview, finder: Any, delimiter: bytes, start: int, end: int) -> int:
    """Index of the last ``delimiter`` wholly inside ``view[start:end]``, or -1."""
    if finder is not None:
        return finder.rfind(delimiter, start, end)
    overlap = len(delimiter) - 1
    hi = end
    while hi > start:
        lo = max(start, hi - _SEARCH_STEP)
        found = bytes(view[lo:hi]).rfind(delimiter)
        if found >= 0:
            return lo + found
        if lo == start:
            break
        hi = lo + overlap  # a delimiter across the step boundary is found in the next step
    return -1


def _fill(fill: Callable[[memoryview], int], buf: bytearray, filled: int) -> int:
    """Fill ``buf`` from ``filled`` on until it is full or the source ends; the new fill."""
    view = memoryview(buf)
    while filled < len(buf):
        n = fill(view[filled:])
        if n == 0:
            break
        filled += n
    return filled


def _file_filler(f: Any, name: str | None) -> Callable[[memoryview], int]:
    what = f"file {name}" if name else "the file object"
    readinto = getattr(f, "readinto", None)

    def fill(dst: memoryview) -> int:
        if readinto is not None:
            n = readinto(dst)
        else:
            data = f.read(len(dst))
            if isinstance(data, str):
                raise UsageError(f"{what} is open in text mode; open it with 'rb'")
            n = len(data) if data is not None else None
            if n:
                dst[:n] = data
        if n is None:
            raise UsageError(f"{what} is non-blocking and has no data ready; "
                             f"pass a blocking binary file")
        return n

    return fill


def _chunk_filler(chunks: Iterator[object]) -> Callable[[memoryview], int]:
    state: dict[str, Any] = {"chunk": memoryview(b""), "pos": 0, "k": -1}

    def fill(dst: memoryview) -> int:
        chunk, pos = state["chunk"], state["pos"]
        while pos == chunk.nbytes:
            try:
                raw = next(chunks)
            except StopIteration:
                return 0
            state["k"] += 1
            chunk, pos = check_buffer(raw, f"chunk {state['k']} of the source"), 0
        n = min(len(dst), chunk.nbytes - pos)
        dst[:n] = chunk[pos:pos + n]
        state["chunk"], state["pos"] = chunk, pos + n
        return n

    return fill


def _remaining(f: Any) -> int | None:
    """Bytes left in a seekable file object, else ``None``."""
    try:
        if not f.seekable():
            return None
        here = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(here)
        return max(0, end - here)
    except (AttributeError, OSError, ValueError):
        return None


# --- scan --------------------------------------------------------------------------------------
def data_slot_size(device: Any) -> int:
    """The device's data slot size in bytes (the default piece size of ``scan``)."""
    size = getattr(device, "data_slot_size", None)
    if size is None:
        size = device.info().get("data_slot_size")
    if not isinstance(size, int):
        raise UsageError(f"{device!r} does not say its data slot size; pass piece_size=")
    return size


def with_piece(exc: BaseException, piece: Piece) -> BaseException:
    """A copy of ``exc`` (same class, same attributes) whose message names ``piece`` and that
    carries ``piece_index``, ``piece_offset`` and ``piece_source``."""
    note = f"piece {piece.index} at {_where(piece.offset, piece.source)}"
    cls = type(exc)
    try:
        new = cls.__new__(cls)
    except Exception:  # a class that cannot be built bare: annotate the original
        new = exc
    else:
        new.__dict__.update(exc.__dict__)
    if isinstance(exc, OSError) and exc.strerror is not None:
        new.errno = exc.errno  # type: ignore[attr-defined]
        if exc.filename is not None:  # (setting None would print ": None")
            new.filename = exc.filename  # type: ignore[attr-defined]
        new.strerror = f"{note}: {exc.strerror}"  # type: ignore[attr-defined]
        new.args = (exc.errno, new.strerror)  # type: ignore[attr-defined]
    else:
        new.args = (f"{note}: {exc}",)
    new.piece_index = piece.index  # type: ignore[attr-defined]
    new.piece_offset = piece.offset  # type: ignore[attr-defined]
    new.piece_source = piece.source  # type: ignore[attr-defined]
    return new


def scan(device: Any, program: Any, source: object, *, piece_size: int | None = None,
         record: int | None = None, delimiter: bytes | None = None, args: tuple | list = (),
         size: int | None = None, read: int | None = None, budget: int | None = None,
         timeout: float | None = None, workers: int | None = None,
         progress: Progress | None = None, reduce: Callable[[Any, Any], Any] | None = None,
         initial: Any = None) -> Any:
    """Run ``program`` on every piece of ``source`` (split by ``pieces``) through
    ``device.map``, keeping every engine busy.

    ``piece_size`` defaults to the window ``size`` when given, else the device's data slot
    size. Without ``reduce``, returns an iterator of ``Result``s in source order, each with its
    piece's ``offset`` and ``index`` (lazy like ``map``: the scan runs as it is consumed; close
    it to stop early). With ``reduce``, runs the whole scan and returns
    ``functools.reduce(reduce, results, initial)`` (``initial=None``: no initial value).
    ``progress(done_bytes, total_bytes or None)`` is called after each piece. A failing piece
    raises its exception's class with ``piece_index``, ``piece_offset`` and ``piece_source``
    set and named in the message.
    """
    for name, fn in (("progress", progress), ("reduce", reduce)):
        if fn is not None and not callable(fn):
            raise UsageError(f"{name} must be callable, not {type(fn).__name__}")
    if size is not None:
        check_int("size", size, 1, MAX_PIECE_SIZE)
    if piece_size is None:
        piece_size = size if size is not None else data_slot_size(device)
    else:
        check_int("piece_size", piece_size, 1, MAX_PIECE_SIZE)
        limit = size if size is not None else data_slot_size(device)
        if piece_size > limit:
            what = "the window size" if size is not None else "the device's data slot"
            raise DataTooLarge(f"piece_size {piece_size} is larger than {what} "
                               f"({limit} bytes)", size=piece_size, limit=limit)
    # Only what the caller set is passed on, so the device's own defaults apply to the rest.
    options = {name: value for name, value in (
        ("args", args), ("size", size), ("read", read), ("budget", budget),
        ("timeout", timeout), ("workers", workers)) if value is not None and value != ()}
    split = pieces(source, piece_size, record=record, delimiter=delimiter)
    pending: collections.deque[Piece] = collections.deque()

    def feed() -> Generator[memoryview, None, None]:
        # map pulls items in order under its own lock; a piece is queued before it is handed
        # over, so result k always belongs to pending[0].
        for piece in split:
            pending.append(piece)
            yield piece.data

    items = feed()
    try:  # map checks the program and its options now (its runs start on the first result)
        mapped = device.map(program, items, **options)
    except BaseException:
        split.close()
        raise
    results = _scan(mapped, items, split, pending, progress)
    if reduce is None:
        return results
    try:
        if initial is None:
            try:
                first = next(results)
            except StopIteration:
                raise UsageError("scan of an empty source with reduce= needs initial=") from None
            return functools.reduce(reduce, results, first)
        return functools.reduce(reduce, results, initial)
    finally:
        results.close()


def _scan(mapped: Iterator[Any], items: Generator[memoryview, None, None], split: Pieces,
          pending: collections.deque[Piece], progress: Progress | None
          ) -> Generator[Any, None, None]:
    """The results of ``mapped`` with their pieces' offsets, index and errors."""
    done = 0
    try:
        while True:
            try:
                result = next(mapped)
            except StopIteration:
                return
            except Exception as exc:
                if not pending:  # the splitter itself failed (its error names the offset)
                    raise
                raise with_piece(exc, pending[0]).with_traceback(exc.__traceback__) from None
            piece = pending.popleft()
            done += piece.size
            if progress is not None:
                progress(done, split.total)
            yield dataclasses.replace(result, offset=piece.offset, index=piece.index)
    finally:
        close = getattr(mapped, "close", None)
        if close is not None:
            close()  # stops the map's workers before the pieces they hold are released
        items.close()
        pending.clear()
        split.close()
