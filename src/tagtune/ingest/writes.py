"""Writes into the catalog that every reader shares: bulk inserts, one transaction per
source's writes, the image checks of a source's candidate files, and its problem rows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import duckdb

from tagtune.ingest.images import check_images
from tagtune.ingest.sources import Problem
from tagtune.recipe.model import Recipe


def insert_rows(
    con: duckdb.DuckDBPyConnection, table: str, columns: list[str], rows: list[tuple]
) -> None:
    """Bulk insert through Arrow (DuckDB's executemany costs milliseconds per row)."""
    if not rows:
        return
    import pyarrow as pa

    data = pa.table({c: list(v) for c, v in zip(columns, zip(*rows, strict=True), strict=True)})
    con.register("_rows_py", data)
    try:
        con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM _rows_py")
    finally:
        con.unregister("_rows_py")


def track(progress: Any, items: Iterable, total: int, description: str) -> Iterator:
    """Iterate `items`, advancing a rich Progress task when one is given."""
    if progress is None or not total:
        yield from items
        return
    task = progress.add_task(description, total=total)
    for item in items:
        yield item
        progress.advance(task)
    progress.remove_task(task)


FILE_COLUMNS = ["post_id", "path", "sha256", "width", "height", "format", "bytes"]


def check_files(
    con: duckdb.DuckDBPyConnection, cands: list, recipe: Recipe, progress: Any
) -> tuple[list[tuple], list[Problem]]:
    """Check candidate images; return rows for `files` and problems (bad or duplicate)."""
    seen_sha = {r[0] for r in con.execute("SELECT sha256 FROM files").fetchall()}
    seen_md5 = {
        r[0]
        for r in con.execute(
            "SELECT p.md5 FROM posts p JOIN files f ON f.post_id = p.id WHERE p.md5 IS NOT NULL"
        ).fetchall()
    }
    done: set[int] = set()
    rows: list[tuple] = []
    problems: list[Problem] = []
    cfg = recipe.ingest
    # read and decode in threads (a file whose post md5 is already ingested is not read),
    # then decide duplicates in post-id order
    paths = [c[2] for c in cands if not (c[1] and c[1] in seen_md5)]
    results = check_images(paths, cfg.max_image_pixels, cfg.min_image_side)
    checks = dict(zip(paths, track(progress, results, len(paths), "checking images"), strict=True))
    for pid, md5, path in cands:
        chk = checks.get(path)
        if pid in done:
            problems.append(Problem(path, pid, "duplicate", f"post {pid} already has a file"))
        elif chk is None or (md5 and md5 in seen_md5):
            problems.append(Problem(path, pid, "duplicate", f"md5 {md5} is already ingested"))
        elif chk.reason:
            problems.append(Problem(path, pid, chk.reason, chk.detail or ""))
        elif chk.sha256 in seen_sha:
            problems.append(Problem(path, pid, "duplicate", "same content as an ingested file"))
        else:
            seen_sha.add(chk.sha256)
            if md5:
                seen_md5.add(md5)
            if md5 and chk.md5 != md5:  # kept, but a wrong pairing would train wrong tags
                problems.append(
                    Problem(
                        path, pid, "md5-differs",
                        f"post {pid} has md5 {md5}, the file {chk.md5}; kept (re-encoded, "
                        "or not this post's image?)",
                    )
                )  # fmt: skip
            done.add(pid)
            rows.append((pid, path, chk.sha256, chk.width, chk.height, chk.format, chk.bytes))
    return rows, problems


def record_problems(
    con: duckdb.DuckDBPyConnection, source: str, problems: Iterable[Problem]
) -> None:
    """Replace the ingest problems recorded for `source` with these."""
    con.execute("DELETE FROM problems WHERE stage = 'ingest' AND source = ?", [source])
    rows = [(p.path, p.post_id, p.reason, p.detail, "ingest", source) for p in problems]
    insert_rows(con, "problems", ["path", "post_id", "reason", "detail", "stage", "source"], rows)
