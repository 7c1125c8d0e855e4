"""Model-site hashes of a file in one read pass: SHA-256, AutoV1, AutoV2, AutoV3, CRC32, BLAKE3.

- sha256: hex of the whole file; autov2: its first 10 hex digits, upper-case (as Civitai and
  A1111 print it).
- autov3: SHA-256 of the bytes after the safetensors header (A1111's "addnet" hash; the value
  `modelspec.hash_sha256` carries as "0x" + hex); None for a file that is not safetensors.
- autov1: A1111's legacy hash, SHA-256 of the 64 KiB at offset 1 MiB, first 8 hex digits;
  None for files of 2 MiB or less (model sites show it only above that).
- crc32: zlib's CRC-32 as 8 upper-case hex digits (`hello world` -> `0D4A1185`).
- blake3: hex of the whole file.

Speed: the file is read once, in chunks, into a small pool of shared buffers; each hash runs
in its own thread over the same buffers (hashlib, zlib and blake3 release the GIL on large
buffers), so the wall time is close to that of the slowest single hash.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

from tagtune.core.errors import InputError
from tagtune.core.untrusted import open_regular
from tagtune.core.workers import Background

CHUNK_BYTES = 8 * 1024 * 1024
POOL_BUFFERS = 6
AUTOV1_OFFSET = 0x100000
AUTOV1_LENGTH = 0x10000
AUTOV1_MIN_SIZE = 2 * 1024 * 1024
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
HASH_NAMES = ("sha256", "autov1", "autov2", "autov3", "crc32", "blake3")


def safetensors_data_offset(head: bytes, size: int) -> int | None:
    """Offset of the data section if `head` (the file's first bytes) starts a safetensors
    file of `size` bytes, else None. Only the framing is checked, not the tensors."""
    if len(head) < 9:
        return None
    n = int.from_bytes(head[:8], "little")
    if n < 2 or n > MAX_SAFETENSORS_HEADER or 8 + n > size or head[8:9] != b"{":
        return None
    return 8 + n


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: memoryview) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value & 0xFFFFFFFF:08X}"


class _Skip:
    """Feeds a hasher only the bytes at or after absolute offset `start`."""

    def __init__(self, inner, start: int) -> None:
        self.inner, self.start, self.pos = inner, start, 0

    def update(self, data: memoryview) -> None:
        end = self.pos + len(data)
        if end > self.start:
            self.inner.update(data[max(0, self.start - self.pos) :])
        self.pos = end

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


class _Window:
    """AutoV1: SHA-256 of the bytes in [start, start + length), first 8 hex digits."""

    def __init__(self, start: int, length: int) -> None:
        self.start, self.end, self.pos = start, start + length, 0
        self.data = bytearray()

    def update(self, data: memoryview) -> None:
        end = self.pos + len(data)
        if self.pos < self.end and end > self.start:
            self.data += data[max(self.start - self.pos, 0) : self.end - self.pos]
        self.pos = end

    def hexdigest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()[:8]


def _blake3():
    import blake3

    threads = blake3.blake3.AUTO if (os.cpu_count() or 1) > 4 else 1
    return blake3.blake3(max_threads=threads)


def _fan_out(fh, hashers: dict, chunk_bytes: int, progress: Callable[[int], None] | None) -> int:
    """Read `fh` once into a pool of buffers; every hasher thread sees every chunk, in order.

    A buffer is reused only when all hashers are done with it. Returns the bytes read.
    """
    pool = [bytearray(chunk_bytes) for _ in range(POOL_BUFFERS)]
    free: queue.Queue[int] = queue.Queue()
    for i in range(POOL_BUFFERS):
        free.put(i)
    pending = [0] * POOL_BUFFERS
    lock = threading.Lock()

    def release(slot: int) -> None:
        with lock:
            pending[slot] -= 1
            if pending[slot] == 0:
                free.put(slot)

    workers = {
        name: Background(lambda item, h=h: h.update(item[1]), lambda item: release(item[0]), 0)
        for name, h in hashers.items()
    }
    pos = 0
    try:
        while True:
            slot = free.get()
            n = fh.readinto(pool[slot])
            if not n:
                break
            view = memoryview(pool[slot])[:n]
            pending[slot] = len(workers)
            for w in workers.values():
                w.q.put((slot, view))
            pos += n
            if progress:
                progress(pos)
    finally:
        errors = {}
        for name, w in workers.items():
            try:
                w.close()
            except BaseException as exc:  # reported below, named by its hasher
                errors[name] = exc
    for name, exc in errors.items():
        raise RuntimeError(f"{name}: {exc}") from exc
    return pos


def file_hashes(
    path: str | Path,
    progress: Callable[[int], None] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, str | None]:
    """All model-site hashes of one file in one read pass (see the module doc for each).

    `progress(n)` is called with the number of bytes read after each chunk.
    """
    path = Path(path)
    try:
        with open_regular(path) as fh:  # a FIFO would block the hash forever
            size = os.fstat(fh.fileno()).st_size
            data_offset = safetensors_data_offset(fh.read(16), size)
            fh.seek(0)
            hashers: dict = {"sha256": hashlib.sha256(), "crc32": _Crc32(), "blake3": _blake3()}
            if data_offset is not None:
                hashers["autov3"] = _Skip(hashlib.sha256(), data_offset)
            if size > AUTOV1_MIN_SIZE:
                hashers["autov1"] = _Window(AUTOV1_OFFSET, AUTOV1_LENGTH)
            read = _fan_out(fh, hashers, chunk_bytes, progress)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=path) from exc
    if read != size:
        raise InputError(
            f"file changed while hashing ({size} bytes expected, {read} read)", file=path
        )
    out = {name: h.hexdigest() for name, h in hashers.items()}
    out["autov2"] = out["sha256"][:10].upper()
    return {k: out.get(k) for k in HASH_NAMES}
