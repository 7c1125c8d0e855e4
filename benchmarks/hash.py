"""All model-site hashes of a large safetensors file in one pass vs `sha256sum` alone.

    .venv/bin/python benchmarks/hash.py [--size-gb 7] [--dir DIR] [--repeat 1]

Writes a safetensors file of the given size (one big U8 tensor, so AutoV3 is computed too),
reads it once to warm the page cache, then times `sha256sum FILE` and
`tagtune.models.hashes.file_hashes(FILE)` on the same warm file, prints both wall times and the
ratio (goal: <= 1.3), and deletes the file. Needs free disk and RAM of about the file size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tagtune.models.hashes import file_hashes

BLOCK = 64 * 1024 * 1024


def write_file(path: Path, size: int) -> None:
    """A valid safetensors file of exactly `size` bytes with pseudo-random data."""
    header = b""
    data_size = size
    for _ in range(3):  # the header's length depends on the data size, which depends on it
        entry = {"blob": {"dtype": "U8", "shape": [data_size], "data_offsets": [0, data_size]}}
        header = json.dumps(entry).encode()
        header += b" " * (-len(header) % 8)
        data_size = size - 8 - len(header)
    block = bytearray(os.urandom(BLOCK))
    with open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header)
        left, i = data_size, 0
        while left:
            block[:8] = i.to_bytes(8, "little")  # every block differs
            n = min(left, BLOCK)
            fh.write(memoryview(block)[:n])
            left -= n
            i += 1


def warm(path: Path) -> None:
    """Read the file once so both contenders start from the page cache."""
    with open(path, "rb") as fh:
        while fh.read(BLOCK):
            pass


def time_sha256sum(path: Path) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True)
    return time.perf_counter() - t, out.stdout.split()[0]


def time_ours(path: Path) -> tuple[float, dict]:
    t = time.perf_counter()
    h = file_hashes(path)
    return time.perf_counter() - t, h


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=7.0, help="file size in GB (10^9 bytes)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the file")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs of each (best is kept)")
    args = ap.parse_args()
    size = int(args.size_gb * 1e9)
    workdir = Path(tempfile.mkdtemp(prefix="tagtune-hash-bench-", dir=args.dir))
    path = workdir / "bench.safetensors"
    try:
        t = time.perf_counter()
        write_file(path, size)
        print(
            f"wrote {size / 1e9:.2f} GB in {time.perf_counter() - t:.1f} s; cpus: {os.cpu_count()}"
        )
        warm(path)
        base, ours = [], []
        for _ in range(args.repeat):
            dt, ref_sha = time_sha256sum(path)
            base.append(dt)
            dt, hashes = time_ours(path)
            ours.append(dt)
            assert hashes["sha256"] == ref_sha, "sha256 differs from sha256sum"
            assert hashes["autov3"] is not None
        b, o = min(base), min(ours)
        print(f"sha256sum alone:            {b:7.2f} s  ({size / b / 1e9:.2f} GB/s)")
        print(f"all 6 hashes, one pass:     {o:7.2f} s  ({size / o / 1e9:.2f} GB/s)")
        print(f"ratio (ours / sha256sum):   {o / b:7.2f}  (goal <= 1.30)")
        if size <= 64 * 1024 * 1024:
            assert hashes["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
