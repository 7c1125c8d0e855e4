"""Ingest speed: a synthetic N-post JSONL dump (default 1,000,000), ingested metadata-only.

Prints posts/s of the ingest alone (the dump is written first, not timed) and the peak
resident memory of this process (resource.getrusage). Target (issue 2): >= 100,000 posts/s
and < 4 GB on a 2-core machine.

    .venv/bin/python benchmarks/ingest.py [--n 1000000] [--out bench-out/ingest]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time
from pathlib import Path

from tagtune.ingest import ingest
from tagtune.recipe.workspace import init_workspace
from tagtune.synthetic.collection import write_jsonl_dump


def main() -> None:
    """Write the dump, ingest it into a fresh workspace, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="posts in the dump")
    ap.add_argument("--out", type=Path, default=Path("bench-out/ingest"), help="scratch folder")
    ap.add_argument("--keep", action="store_true", help="keep the dump and workspace")
    args = ap.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    dump = args.out / "posts.jsonl"
    t0 = time.perf_counter()
    write_jsonl_dump(dump, args.n, seed=0)
    t_gen = time.perf_counter() - t0
    size_mb = dump.stat().st_size / 2**20
    print(f"dump: {args.n:,} posts, {size_mb:,.0f} MiB written in {t_gen:.1f} s")

    ws = init_workspace(args.out / "ws")
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    summary = ingest(ws, [dump])
    t_ing, c_ing = time.perf_counter() - t0, time.process_time() - c0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(
        f"ingest: {summary['posts']:,} posts in {t_ing:.2f} s = {summary['posts'] / t_ing:,.0f} posts/s"
    )
    print(
        f"ingest CPU: {c_ing:.1f} s ({summary['posts'] / c_ing:,.0f} posts per CPU-second); "
        f"load average before ingest {load:.1f} on {os.cpu_count()} cores"
    )
    print(f"peak RSS: {peak_gb:.2f} GiB (whole process, generation included)")
    print(
        f"catalog: {(ws.catalog_path.stat().st_size) / 2**20:,.0f} MiB, problems {summary['problems']}"
    )
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
