"""Report speed and size: `tagtune report` of a 1,000,000-post catalog (metadata only).

The catalog is the ingest benchmark's synthetic JSONL dump, ingested and captioned (neither
timed). Prints the seconds of each report build (the first draws every chart; a rewrite as
`--watch` does reuses unchanged ones) and the bytes of the page and of its asset folder.
Target (issue 19): a few seconds, and a small page.

    .venv/bin/python benchmarks/report.py [--n 1000000] [--out bench-out/report] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from tagtune.captions.build import build_captions
from tagtune.core.workspace import open_workspace
from tagtune.ingest import ingest
from tagtune.recipe.workspace import init_workspace
from tagtune.report import write_report
from tagtune.synthetic.collection import write_jsonl_dump


def build_catalog(out: Path, n: int) -> Path:
    """A workspace whose catalog holds `n` synthetic posts with captions (reused if there)."""
    ws_root = out / f"ws-{n}"
    if (ws_root / "catalog.duckdb").is_file() and (ws_root / ".complete").is_file():
        print(f"catalog: reusing {ws_root}")
        return ws_root
    shutil.rmtree(ws_root, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    dump = out / "posts.jsonl"
    t0 = time.perf_counter()
    write_jsonl_dump(dump, n, seed=0)
    ws = init_workspace(ws_root)
    ingest(ws, [dump])
    build_captions(ws)
    dump.unlink()
    (ws_root / ".complete").write_text("ok\n")
    print(f"catalog: {n:,} posts ingested and captioned in {time.perf_counter() - t0:.1f} s")
    return ws_root


def main() -> None:
    """Build the catalog, then the report twice; print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="posts in the catalog")
    ap.add_argument("--out", type=Path, default=Path("bench-out/report"), help="scratch folder")
    ap.add_argument("--keep", action="store_true", help="keep the workspace for another run")
    args = ap.parse_args()

    ws = open_workspace(build_catalog(args.out, args.n))
    shutil.rmtree(ws.out_dir, ignore_errors=True)
    load = os.getloadavg()[0]
    for label in ("first build", "rewrite"):
        t0, c0 = time.perf_counter(), time.process_time()
        result = write_report(ws)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"report, {label}: {wall:.2f} s (CPU {cpu:.2f} s); page {result.page_bytes:,} bytes, "
            f"{result.assets_count} assets {result.asset_bytes:,} bytes, "
            f"total {result.page_bytes + result.asset_bytes:,} bytes"
        )
    print(f"load average before: {load:.1f} on {os.cpu_count()} cores; page: {result.path}")
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
