"""Streaming safetensors I/O for merges: headers, one tensor at a time, hashing on the way.

Reads use `os.pread` into a fresh buffer per tensor rather than a memory map, so resident
memory stays near the largest tensor (a map of a 7 GB file would count every page read
in the process's RSS). Writes put the header first (every output shape and dtype is known
up front), then append tensor bytes in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tagtune.errors import ModelFileError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
DTYPE_NAMES = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}
ITEM_SIZE = {name: torch.empty(0, dtype=dt).element_size() for name, dt in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes lie in a safetensors file (offsets from the file start)."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class Header:
    """The parsed header of one safetensors file."""

    path: Path
    size: int
    data_start: int
    raw: bytes
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)


def shape_text(shape: tuple[int, ...]) -> str:
    """`4x320x3x3` (the notation of sdxl-base-keys.tsv); `scalar` for 0-d tensors."""
    return "x".join(str(s) for s in shape) or "scalar"


def read_header(path: str | Path) -> Header:
    """Parse a safetensors header without reading tensor data; ModelFileError if malformed."""
    path = Path(path)
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise ModelFileError(
            "pickled checkpoints are never loaded; convert it to .safetensors first", file=path
        )
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ModelFileError("not a safetensors file (shorter than 8 bytes)", file=path)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise ModelFileError("not a safetensors file (bad header length)", file=path)
            raw = fh.read(n)
    except FileNotFoundError:
        raise ModelFileError("checkpoint not found", file=path) from None
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError("not a safetensors file (header is not JSON)", file=path) from None
    data_start = 8 + n
    meta = doc.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    for key, spec in doc.items():
        try:
            start, end = spec["data_offsets"]
            info = TensorInfo(
                spec["dtype"],
                tuple(int(s) for s in spec["shape"]),
                data_start + start,
                data_start + end,
            )
        except (KeyError, TypeError, ValueError):
            raise ModelFileError("malformed tensor entry", file=path, field=key) from None
        if info.dtype not in DTYPES:
            raise ModelFileError(
                "unsupported tensor dtype",
                file=path,
                field=key,
                value=info.dtype,
                allowed=", ".join(DTYPES),
            )
        if info.end > size or info.nbytes != ITEM_SIZE[info.dtype] * _numel(info.shape):
            raise ModelFileError(
                "tensor bytes out of range (truncated file?)", file=path, field=key
            )
        tensors[key] = info
    return Header(path, size, data_start, bytes(head) + raw, tensors, dict(meta))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class Slots:
    """A few reusable buffers handed out in turn; a buffer is reused once it is released.

    Fresh buffers per tensor would cost a page fault per 4 KiB on every read (tens of
    seconds of system time over 14 GB); reusing `k` buffers, each grown to the largest
    tensor seen, keeps memory at k x the largest tensor. Releases come in take order.
    """

    def __init__(self, k: int = 2) -> None:
        self.bufs = [bytearray(0) for _ in range(k)]
        self.taken = 0
        self.released = 0
        self.cv = threading.Condition()

    def take(self, nbytes: int) -> memoryview:
        """A writable buffer of `nbytes`, once the one taken k turns ago was released."""
        k = len(self.bufs)
        with self.cv:
            self.cv.wait_for(lambda: self.released >= self.taken - k + 1)
            slot = self.taken % k
            self.taken += 1
        if len(self.bufs[slot]) < nbytes:
            self.bufs[slot] = bytearray(nbytes)
        return memoryview(self.bufs[slot])[:nbytes]

    def release(self, _item: object = None) -> None:
        """Mark the oldest taken buffer as free again."""
        with self.cv:
            self.released += 1
            self.cv.notify_all()


class Background:
    """One worker thread applying `fn` to queued buffers in order (hashing, writing).

    hashlib and file writes release the GIL, so this overlaps them with the merge math.
    `done(item)` runs after each item (to release its buffer), also after an error.
    """

    def __init__(
        self,
        fn: Callable[[object], object],
        done: Callable[[object], None] | None = None,
        depth: int = 2,
    ) -> None:
        self.fn = fn
        self.done = done
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            try:
                if self.error is None:
                    self.fn(item)
            except BaseException as exc:  # re-raised in the caller's thread
                self.error = exc
            finally:
                if self.done is not None:
                    self.done(item)

    def put(self, item: object) -> None:
        """Queue one buffer (blocks while the queue is full)."""
        if self.error is not None:
            raise self.error
        self.q.put(item)

    def close(self) -> None:
        """Finish the queued work, stop the thread, re-raise its error if any."""
        if self.thread.is_alive():
            self.q.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


class Reader:
    """Reads tensors of one file by pread into reused buffers; hashes the file (SHA-256) on a
    background thread while reads come in file order.

    A buffer returned by `read_bytes` / `tensor` stays valid until the next-but-one read.
    """

    def __init__(self, header: Header, hash_file: bool = True) -> None:
        self.header = header
        self.fd = os.open(header.path, os.O_RDONLY)
        self.slots = Slots(2)
        self.sha = hashlib.sha256(header.raw) if hash_file else None
        self.hasher = Background(self.sha.update, self.slots.release) if self.sha else None
        self.pos = header.data_start

    def read_bytes(self, info: TensorInfo) -> memoryview:
        """The raw bytes of one tensor (valid until the next-but-one read of this file)."""
        view = self.slots.take(info.nbytes)
        got = 0
        while got < info.nbytes:
            n = os.preadv(self.fd, [view[got:]], info.start + got)
            if n <= 0:
                raise ModelFileError("file ended inside a tensor", file=self.header.path)
            got += n
        if self.sha is not None and info.start != self.pos:
            self._drop_hash()  # out of file order: hash the whole file again at the end
        if self.hasher is not None:
            self.hasher.put(view)
            self.pos = info.end
        else:
            self.slots.release()
        return view

    def skip(self, key: str) -> None:
        """A tensor this file does not contribute: read it only if hashing needs its bytes."""
        info = self.header.tensors[key]
        if self.sha is not None and info.start == self.pos:
            self.read_bytes(info)
        elif self.sha is not None:
            self._drop_hash()

    def _drop_hash(self) -> None:
        if self.hasher is not None:
            self.hasher.close()
        self.sha = self.hasher = None

    def tensor(self, key: str) -> torch.Tensor:
        """One tensor, in its stored dtype and shape."""
        info = self.header.tensors[key]
        return to_tensor(self.read_bytes(info), info.dtype, info.shape)

    def sha256(self) -> str:
        """SHA-256 of the whole file: from the in-order reads when they covered it, else a pass."""
        if self.sha is not None and self.pos == self.header.size:
            self.hasher.close()
            return self.sha.hexdigest()
        return sha256_file(self.header.path)

    def close(self) -> None:
        """Stop the hashing thread and close the file descriptor."""
        try:
            if self.hasher is not None:
                self.hasher.close()
        finally:
            os.close(self.fd)


def to_tensor(buf: bytearray | memoryview, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor viewing `buf` (no copy)."""
    if not len(buf):
        return torch.empty(shape, dtype=DTYPES[dtype])
    return torch.frombuffer(buf, dtype=DTYPES[dtype]).reshape(shape)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (no copy when it is contiguous)."""
    flat = t.contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def sha256_file(path: str | Path, chunk: int = 16 << 20) -> str:
    """SHA-256 of a whole file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def encode_header(
    entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]
) -> tuple[bytes, list[int]]:
    """Header bytes (length prefix + JSON padded to 8 bytes) for tensors written in this order.

    Returns the bytes and each tensor's byte size in the same order.
    """
    doc: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    sizes = []
    for key, dtype, shape in entries:
        nbytes = ITEM_SIZE[dtype] * _numel(shape)
        doc[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        sizes.append(nbytes)
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body, sizes
