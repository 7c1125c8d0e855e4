"""Benchmark of `tagtune merge` on two SDXL-sized checkpoints (issue 8).

    .venv/bin/python benchmarks/merge.py [--scale 1.0] [--largest N] [--dir bench-out/merge] [--keep]

Writes two single-file checkpoints with the real SDXL tensor names and shapes
(`tests/data/sdxl-base-keys.tsv`, 2,515 tensors, fp16, ~6.9 GB each at --scale 1.0; a smaller
scale shrinks each tensor's first dimension), streaming the bytes so the writer never holds a
model. Then times a plain read of both files (warm page cache, and cold: the files' pages
evicted with posix_fadvise), the I/O floor (read both, write one, fsync), and weighted-sum
merges run in fresh processes (as the CLI runs them) whose peak RSS (getrusage) is measured:
warm with and without parent hashing, and cold with hashing. Targets: peak RSS < 2 GB, merge
wall time within 2x of the plain read. Disk: three files (~21 GB at full size), deleted at
the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
KEY_FILE = ROOT / "tests/data/sdxl-base-keys.tsv"
POOL = 1 << 24  # fp16 values in the random pool the tensors are cut from


def sdxl_layout(scale: float) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of every tensor; first dimension scaled (at least 1)."""
    path = KEY_FILE
    out = []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#") or line.startswith("key\t"):
            continue
        name, shape_text, _required = line.split("\t")
        shape = tuple(int(s) for s in shape_text.split("x")) if shape_text != "scalar" else ()
        if name.endswith("position_ids"):
            out.append((name, "I64", shape))
            continue
        if shape and scale != 1.0:
            shape = (max(1, math.ceil(shape[0] * scale)), *shape[1:])
        out.append((name, "F16", shape))
    return out


def write_synthetic(path: Path, layout, seed: int) -> int:
    """Stream a checkpoint to `path`: header first, then tensor bytes cut from a random pool."""
    from tagtune.models.safetensors_io import encode_header

    header, sizes = encode_header(layout, {"modelspec.architecture": "stable-diffusion-xl-v1-base"})
    g = torch.Generator().manual_seed(seed)
    pool = memoryview((torch.randn(POOL, generator=g) * 0.05).half().view(torch.uint8).numpy())
    ints = memoryview(torch.arange(77, dtype=torch.int64).view(torch.uint8).numpy())
    pos = seed * 4097 * 2
    with open(path, "wb") as fh:
        fh.write(header)
        for (_name, dtype, _shape), size in zip(layout, sizes, strict=True):
            if dtype == "I64":
                fh.write(ints[:size])
                continue
            left = size
            while left:
                pos %= len(pool) - 2
                n = min(left, len(pool) - pos)
                fh.write(pool[pos : pos + n])
                pos += n + 2 * 37  # shift so tensors do not repeat each other
                left -= n
    return path.stat().st_size


def io_floor(paths: list[Path], out: Path, chunk: int = 16 << 20) -> float:
    """Seconds to read both files and write one file of the output's size, with fsync.

    What any streaming merge must do at least: the floor the merge math and hashing add to.
    """
    buf = bytearray(chunk)
    start = time.perf_counter()
    with open(out, "wb", buffering=0) as dst:
        for i, p in enumerate(paths):
            with open(p, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    if i == 0:
                        dst.write(memoryview(buf)[:n])
        os.fsync(dst.fileno())
    elapsed = time.perf_counter() - start
    out.unlink()
    return elapsed


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (only theirs), so the next read is cold."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_merge(a: Path, b: Path, out: Path, hash_parents: bool, src: Path | None = None) -> dict:
    """Merge in a fresh process; its wall time and peak RSS.

    With `src`, the child imports tagtune from that folder (another version, for a before /
    after comparison on the same files), with one torch thread as this benchmark used to run.
    """
    env = dict(os.environ)
    if src is not None:
        env.update(PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-c",
        MERGE_CHILD,
        str(a),
        str(b),
        str(out),
        "1" if hash_parents else "0",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plain_read(paths: list[Path], chunk: int = 16 << 20) -> float:
    """Seconds to read the files once, start to end, into one reused buffer."""
    buf = bytearray(chunk)
    start = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - start


MERGE_CHILD = """
import json, resource, sys, time
from tagtune.merge.checkpoints import MergeSpec, merge_checkpoints
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
r = merge_checkpoints(sys.argv[1], sys.argv[2], sys.argv[3], MergeSpec(alpha=0.3),
                      hash_parents=sys.argv[4] == "1")
print(json.dumps({"seconds": time.perf_counter() - t, "tensors": r.tensors, "merged": r.merged,
                  "base_rss_kb": base, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> None:
    """Build the files, time the plain read and the merge, print the figures, clean up."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="size factor (1.0 = real SDXL)")
    ap.add_argument("--dir", type=Path, default=ROOT / "bench-out" / "merge")
    ap.add_argument("--keep", action="store_true", help="keep the files afterwards")
    ap.add_argument(
        "--largest",
        type=int,
        default=0,
        help="only the N largest tensors at their real shapes (checks peak memory cheaply)",
    )
    ap.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="also time the merges of the tagtune found in this src folder (e.g. the last commit)",
    )
    args = ap.parse_args()

    layout = sdxl_layout(args.scale)
    if args.largest:
        sizes = {name: math.prod(shape) for name, _, shape in layout}
        keep = set(sorted(sizes, key=sizes.get, reverse=True)[: args.largest])
        layout = [row for row in layout if row[0] in keep]
    args.dir.mkdir(parents=True, exist_ok=True)
    a, b, out = (args.dir / n for n in ("a.safetensors", "b.safetensors", "merged.safetensors"))
    try:
        t = time.perf_counter()
        size = write_synthetic(a, layout, 1) + write_synthetic(b, layout, 2)
        print(
            f"wrote 2 x {size / 2e9:.2f} GB ({len(layout)} tensors each) in {time.perf_counter() - t:.1f} s"
        )
        plain_read([a, b])  # warm the page cache
        read_s = min(plain_read([a, b]) for _ in range(2))
        print(f"plain read of both files (warm): {read_s:.2f} s ({size / read_s / 1e9:.2f} GB/s)")
        evict([a, b])
        cold_s = plain_read([a, b])
        print(f"plain read of both files (cold): {cold_s:.2f} s ({size / cold_s / 1e9:.2f} GB/s)")
        plain_read([a, b])  # warm again
        floor_s = io_floor([a, b], out)
        print(
            f"I/O floor (read both, write one, fsync): {floor_s:.2f} s = {floor_s / read_s:.2f}x the read"
        )
        runs = [
            ("warm, with parent AutoV2 hashing", True, False, None),
            ("warm, without parent hashing", False, False, None),
            ("cold, with parent AutoV2 hashing", True, True, None),
        ]
        if args.baseline_src:
            runs += [
                (f"[baseline {args.baseline_src}] warm, with parent hashing", True, False, args.baseline_src),
                (f"[baseline {args.baseline_src}] warm, without parent hashing", False, False, args.baseline_src),
            ]  # fmt: skip
        for what, hash_parents, cold, src in runs:
            if cold:
                evict([a, b])
            res = run_merge(a, b, out, hash_parents, src)
            peak_gb = res["peak_rss_kb"] * 1024 / 1e9
            base_gb = res["base_rss_kb"] * 1024 / 1e9
            base_s = cold_s if cold else read_s
            print(
                f"merge {what} (weighted-sum, {res['merged']} of {res['tensors']} tensors merged): "
                f"{res['seconds']:.2f} s = {res['seconds'] / base_s:.2f}x the "
                f"{'cold' if cold else 'warm'} plain read (target <= 2x), "
                f"{res['seconds'] / floor_s:.2f}x the warm I/O floor"
            )
            print(f"  peak RSS: {peak_gb:.2f} GB (target < 2 GB; {base_gb:.2f} GB after imports)")
            out.unlink()
        print(
            f"this process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB"
        )
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
