"""Counts over the catalog: the ingest summary and `tagtune status`."""

from __future__ import annotations

import json
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
    out.update(origin_status(con))
    out["captions"] = one("SELECT count(*) FROM captions")
    out["problems_by_stage"] = _counts(
        con,
        "SELECT coalesce(stage, '?') || '/' || reason, count(*) FROM problems "
        "GROUP BY ALL ORDER BY 1",
    )
    return out


ORIGINS = ("danbooru", "kohya-folder", "dataset-toml")
"""Where a post came from (`posts.origin`): Danbooru metadata, a folder of images with caption
files, an sd-scripts dataset TOML."""


def origin_status(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """`origins`: per origin, posts, included posts and images; `folders`: per folder of
    caption-file posts, included posts, their repeats and concept; `caption_files`: per
    SOURCE, what its caption files did (`ingest.caption_files`: which won over metadata)."""
    rows = con.execute(
        "SELECT coalesce(origin, 'danbooru'), count(*), count(*) FILTER (WHERE excluded IS NULL), "
        "count(f.post_id) FROM posts LEFT JOIN files f ON f.post_id = posts.id GROUP BY ALL"
    ).fetchall()
    folders = {
        str(folder): {"posts": int(n), "repeats": int(rep), "concept": concept}
        for folder, n, rep, concept in con.execute(
            "SELECT folder, count(*), max(repeats), max(concept) FROM posts WHERE folder IS NOT "
            "NULL AND excluded IS NULL GROUP BY ALL ORDER BY 1"
        ).fetchall()
    }
    notes = {
        key.removeprefix("caption_files:"): json.loads(value)
        for key, value in con.execute(
            "SELECT key, value FROM settings WHERE starts_with(key, 'caption_files:') ORDER BY 1"
        ).fetchall()
    }
    return {"origins": _origins(rows), "folders": folders, "caption_files": notes}


def _origins(rows: list[tuple]) -> dict[str, dict[str, int]]:
    got = {o: {"posts": int(n), "included": int(i), "images": int(f)} for o, n, i, f in rows}
    order = [*ORIGINS, *sorted(set(got) - set(ORIGINS))]
    return {o: got[o] for o in order if o in got}


def read_status(ws: Workspace) -> dict[str, Any]:
    """`tagtune status`: workspace_status of the workspace's catalog (read-only)."""
    with open_catalog(ws.catalog_path, read_only=True) as con:
        return workspace_status(con)
