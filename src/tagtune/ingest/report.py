"""Counts over the catalog: the ingest summary and `tagtune status`."""

from __future__ import annotations

from typing import Any

import duckdb

from tagtune.core.catalog import open_catalog
from tagtune.core.workspace import Workspace


def _counts(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, int]:
    return {str(k): int(n) for k, n in con.execute(sql).fetchall()}


def catalog_summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """`{"posts", "images", "favorites", "excluded": {reason: N}, "problems": {reason: N}}`.

    Whole-catalog totals: posts of every kind, checked image files of included posts,
    favorites that may enter training, safety exclusions and ingest problems by reason.
    """
    one = lambda sql: int(con.execute(sql).fetchone()[0])  # noqa: E731
    return {
        "posts": one("SELECT count(*) FROM posts"),
        "images": one("SELECT count(*) FROM files"),
        "favorites": one("SELECT count(*) FROM posts WHERE favorite AND excluded IS NULL"),
        "excluded": _counts(
            con,
            "SELECT excluded, count(*) FROM posts WHERE excluded IS NOT NULL "
            "GROUP BY ALL ORDER BY 2 DESC, 1",
        ),
        "problems": _counts(
            con,
            "SELECT reason, count(*) FROM problems WHERE stage = 'ingest' "
            "GROUP BY ALL ORDER BY 2 DESC, 1",
        ),
    }


def workspace_status(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The summary plus counts per rating and per year (of posts that may enter training),
    posts with an image, captions built, and problems of every stage by `stage/reason`."""
    out = catalog_summary(con)
    one = lambda sql: int(con.execute(sql).fetchone()[0])  # noqa: E731
    out["included"] = one("SELECT count(*) FROM posts WHERE excluded IS NULL")
    out["trainable"] = one(
        "SELECT count(*) FROM posts JOIN files ON files.post_id = posts.id "
        "WHERE posts.excluded IS NULL"
    )
    out["ratings"] = _counts(
        con,
        "SELECT coalesce(rating, 'missing'), count(*) FROM posts WHERE excluded IS NULL "
        "GROUP BY ALL ORDER BY 1",
    )
    out["years"] = _counts(
        con,
        "SELECT coalesce(CAST(year(date) AS VARCHAR), 'unknown'), count(*) FROM posts "
        "WHERE excluded IS NULL GROUP BY ALL ORDER BY 1",
    )
    out["captions"] = one("SELECT count(*) FROM captions")
    out["problems_by_stage"] = _counts(
        con,
        "SELECT coalesce(stage, '?') || '/' || reason, count(*) FROM problems "
        "GROUP BY ALL ORDER BY 1",
    )
    return out


def read_status(ws: Workspace) -> dict[str, Any]:
    """`tagtune status`: workspace_status of the workspace's catalog (read-only)."""
    with open_catalog(ws.catalog_path, read_only=True) as con:
        return workspace_status(con)
