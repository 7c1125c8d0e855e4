"""Streaming I/O for merges: parents read piece by piece ahead of the math, hashed on the way,
the output written behind it.

Headers are parsed and validated by `tagtune.models.safetensors_io.read_header` (the same
checks, and the same errors, as `load_model`). A tensor is cut into pieces of at most
PIECE_ELEMENTS elements, so every buffer is small and reused whatever the tensor sizes:
resident memory stays at a few dozen MiB however large the files are.

Three kinds of threads overlap (os.pread, file writes, hashlib and torch all release the GIL):

- `PieceReader`: one thread reads each piece of every parent into a pooled buffer, in the
  merge order, and hands the parents' bytes to one SHA-256 thread per parent, so the parents'
  AutoV2 comes from the same reads (when a parent's tensors lie in another order, its hash
  is computed by a separate pass at the end);
- the caller's thread does the math on the pieces;
- `Background` writes the output pieces in order and starts the disk writeback every
  SYNC_BYTES, so the single fsync at the end finds little left to do.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tagtune.core.errors import ModelFileError
from tagtune.core.workers import Background
from tagtune.models.hashes import file_hashes
from tagtune.models.load import PICKLE_SUFFIXES
from tagtune.models.safetensors_io import DTYPES, Header, itemsize, read_header

FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
DTYPE_NAMES = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}
PIECE_ELEMENTS = 1 << 20  # 2 MiB of fp16 per piece: reads, hashing and math stay in cache
SYNC_BYTES = 64 << 20  # start the disk writeback of the output every 64 MiB
BUFFERS_PER_PARENT = 2  # one being read, one being merged and hashed
OUTPUT_BUFFERS = 2  # one being filled, one being written
_WAIT = 0.1  # seconds between checks of the stop flag while blocked


def read_parent(path: str | Path) -> Header:
    """The validated header of one merge input; pickles are refused (never unpickled)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelFileError(
            "pickled checkpoints are never loaded; convert it to .safetensors first", file=path
        )
    if not path.is_file():
        raise ModelFileError("no such file", file=path)
    return read_header(path)


@dataclass(frozen=True)
class Piece:
    """Elements [start, stop) of one tensor, and the parents whose values the output needs."""

    key: str
    start: int
    stop: int
    sources: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of elements in this piece."""
        return self.stop - self.start


def cut_pieces(
    keys: list[str], numel: dict[str, int], sources: dict[str, tuple[int, ...]]
) -> list[Piece]:
    """Every non-empty tensor, in `keys` order, cut into pieces of at most PIECE_ELEMENTS."""
    return [
        Piece(key, s, min(s + PIECE_ELEMENTS, numel[key]), sources[key])
        for key in keys
        for s in range(0, numel[key], PIECE_ELEMENTS)
    ]


class Stopped(Exception):
    """Raised in a helper thread when the merge was stopped by an error elsewhere."""


class Pool:
    """`n` reusable byte buffers; a buffer is handed out again once all its users released it.

    Fresh buffers per piece would cost a page fault per 4 KiB on every read; reused ones are
    faulted in once and stay in the CPU caches.
    """

    def __init__(self, n: int, stop: threading.Event) -> None:
        self.bufs = [bytearray(0) for _ in range(n)]
        self.users = [0] * n
        self.free = list(range(n))
        self.stop = stop
        self.cv = threading.Condition()

    def take(self, nbytes: int, users: int = 1) -> tuple[int, memoryview]:
        """(slot, writable view of `nbytes`), once a buffer is free; Stopped on stop."""
        with self.cv:
            while not self.free:
                if self.stop.is_set():
                    raise Stopped
                self.cv.wait(_WAIT)
            slot = self.free.pop()
            self.users[slot] = users
        if len(self.bufs[slot]) < nbytes:
            self.bufs[slot] = bytearray(nbytes)
        return slot, memoryview(self.bufs[slot])[:nbytes]

    def release(self, slot: int) -> None:
        """One user is done with the buffer in `slot`."""
        with self.cv:
            self.users[slot] -= 1
            if self.users[slot] == 0:
                self.free.append(slot)
                self.cv.notify_all()


def _pread_into(fd: int, view: memoryview, offset: int, path: Path) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            raise ModelFileError("file ended inside a tensor (changed while merging?)", file=path)
        got += n


class PieceReader:
    """Reads the parents' pieces on a thread, ahead of the caller; hashes each parent.

    Iterate it for (piece, {parent index: tensor}); `sha256(i)` after the iteration; `close()`
    at the end, also after an error.
    """

    def __init__(self, headers: list[Header], pieces: list[Piece], hash_files: bool) -> None:
        self.headers = headers
        self.pieces = pieces
        self.stop = threading.Event()
        self.pool = Pool(BUFFERS_PER_PARENT * len(headers), self.stop)
        self.ready: queue.Queue = queue.Queue(maxsize=BUFFERS_PER_PARENT)
        self.fds = [os.open(h.path, os.O_RDONLY) for h in headers]
        self.shas: list = [None] * len(headers)
        self.hashers: list[Background | None] = [None] * len(headers)
        self.pos = [h.data_start for h in headers]
        if hash_files:
            for i, (h, fd) in enumerate(zip(headers, self.fds, strict=True)):
                self.shas[i] = sha = hashlib.sha256(os.pread(fd, h.data_start, 0))
                self.hashers[i] = Background(
                    lambda item, sha=sha: sha.update(item[1]),
                    lambda item: self.pool.release(item[0]),
                )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _put(self, item: object) -> None:
        while True:
            try:
                self.ready.put(item, timeout=_WAIT)
                return
            except queue.Full:
                if self.stop.is_set():
                    raise Stopped from None

    def _run(self) -> None:
        try:
            for n, piece in enumerate(self.pieces):
                self._put((n, self._read(piece)))
            self._put(None)
        except Stopped:
            pass
        except BaseException as exc:  # handed to the caller's thread
            with contextlib.suppress(Stopped):
                self._put(exc)

    def _read(self, piece: Piece) -> dict[int, tuple[int, memoryview]]:
        views = {}
        for i, h in enumerate(self.headers):
            info = h.tensors[piece.key]
            size = itemsize(info.dtype)
            offset = h.data_start + info.begin + piece.start * size
            nbytes = piece.numel * size
            need = i in piece.sources
            hashing = self.hashers[i] is not None and offset == self.pos[i]
            if self.hashers[i] is not None and not hashing:
                self._drop_hash(i)  # out of file order: hashed by a separate pass at the end
            if not (need or hashing):
                continue
            slot, view = self.pool.take(nbytes, users=int(need) + int(hashing))
            _pread_into(self.fds[i], view, offset, h.path)
            if hashing:
                self.hashers[i].put((slot, view))
                self.pos[i] = offset + nbytes
            if need:
                views[i] = (slot, view)
        return views

    def _drop_hash(self, i: int) -> None:
        hasher, self.hashers[i], self.shas[i] = self.hashers[i], None, None
        hasher.close()

    def __iter__(self) -> Iterator[tuple[Piece, dict[int, torch.Tensor]]]:
        """(piece, {parent index: flat tensor of its values}); tensors stay valid until the
        next step of the iteration."""
        while (item := self.ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            n, views = item
            piece = self.pieces[n]
            yield (
                piece,
                {
                    i: to_tensor(view, self.headers[i].tensors[piece.key].dtype)
                    for i, (_, view) in views.items()
                },
            )
            for slot, _ in views.values():
                self.pool.release(slot)

    def sha256(self, i: int) -> str:
        """SHA-256 of parent `i`: from the in-order reads when they covered it, else a pass."""
        hasher, sha = self.hashers[i], self.shas[i]
        if hasher is not None and self.pos[i] == self.headers[i].file_size:
            hasher.close()
            return sha.hexdigest()

        return file_hashes(self.headers[i].path)["sha256"]

    def close(self) -> None:
        """Stop the threads and close the files (safe to call after an error)."""
        self.stop.set()
        self.thread.join()
        try:
            for hasher in self.hashers:
                if hasher is not None:
                    hasher.close()
        finally:
            for fd in self.fds:
                os.close(fd)


def to_tensor(buf: bytearray | memoryview, dtype: str) -> torch.Tensor:
    """A flat tensor viewing `buf` (no copy)."""
    if not len(buf):
        return torch.empty(0, dtype=DTYPES[dtype])
    return torch.frombuffer(buf, dtype=DTYPES[dtype])


def _sync_file_range() -> Callable[[int, int, int], object] | None:
    """Linux's sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE), or None."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return lambda fd, offset, nbytes: fn(fd, offset, nbytes, 2)


class OutputWriter:
    """Appends output pieces on a thread; starts the disk writeback every SYNC_BYTES.

    Without it the kernel writes back only once a tenth of RAM is dirty, so most of the
    output would reach the disk during the final fsync instead of during the merge.
    """

    def __init__(self, fh, start: int) -> None:
        self.fd = fh.fileno()
        self.fh = fh
        self.pool = Pool(OUTPUT_BUFFERS, threading.Event())
        self.synced = self.pos = start
        self.sync = _sync_file_range()
        self.worker = Background(self._write, lambda item: self.pool.release(item[0]))

    def _write(self, item: tuple[int, memoryview]) -> None:
        self.fh.write(item[1])
        self.pos += len(item[1])
        if self.sync is not None and self.pos - self.synced >= SYNC_BYTES:
            self.fh.flush()
            self.sync(self.fd, self.synced, self.pos - self.synced)
            self.synced = self.pos

    def take(self, nbytes: int) -> tuple[int, memoryview]:
        """A free output buffer of `nbytes` (slot, view)."""
        return self.pool.take(nbytes)

    def put(self, slot: int, view: memoryview) -> None:
        """Queue a filled output buffer for writing, in order."""
        self.worker.put((slot, view))

    def close(self) -> None:
        """Write what is queued; re-raise a write error."""
        self.worker.close()
        self.fh.flush()
