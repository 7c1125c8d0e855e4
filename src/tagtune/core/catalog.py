"""The workspace catalog: a DuckDB file holding posts, image files, captions, problems and tags.

Every stage reads and writes here; it is the one source of truth for what enters training.

Tables
- posts: one row per Danbooru post (metadata only is fine: `file` may be null).
  Tag lists keep Danbooru's names (underscores) in Danbooru's alphabetical order.
  `rating` is the modern meaning (g/s/q/e) used by captions; `rating_raw` is as read.
  `date` is the calendar date as written in created_at (its own offset).
  `excluded` is null for posts that may enter training, else the reason (safety filter).
- files: the checked image file of a post (one per post; duplicates by content are skipped);
  `path` is absolute.
- problems: every skipped file or record with the reason, for the summary and `status`.
  `source` is the SOURCE (or favorites file) whose ingest recorded it; a re-ingest replaces them.
- captions: the built caption per included post, its tags in caption order (as written in the
  caption: spaces, not underscores), the group of each tag (artist, copyright, character,
  general, meta, quality, rating, period; same length as tags) and its CLIP token count.
- recommended_tags: the output of `tags suggest`, quoted by the model card.
- settings: `judged_with` = the safety lists and rating setting posts were last judged with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import duckdb

from tagtune.core.errors import InputError, WorkspaceError
from tagtune.core.subsets import render_clause

SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
    id              BIGINT PRIMARY KEY,
    md5             VARCHAR,
    created_at      VARCHAR,
    date            DATE,
    score           INTEGER,
    fav_count       INTEGER,
    rating          VARCHAR,
    rating_raw      VARCHAR,
    file_ext        VARCHAR,
    image_width     INTEGER,
    image_height    INTEGER,
    tags_artist     VARCHAR[],
    tags_copyright  VARCHAR[],
    tags_character  VARCHAR[],
    tags_general    VARCHAR[],
    tags_meta       VARCHAR[],
    parent_id       BIGINT,
    is_deleted      BOOLEAN,
    source          VARCHAR,
    raw             JSON,
    favorite        BOOLEAN DEFAULT FALSE,
    excluded        VARCHAR,
    ingested_at     TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE IF NOT EXISTS files (
    post_id     BIGINT PRIMARY KEY,
    path        VARCHAR NOT NULL,
    sha256      VARCHAR NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    format      VARCHAR,
    bytes       BIGINT
);
CREATE TABLE IF NOT EXISTS problems (
    path        VARCHAR,
    post_id     BIGINT,
    reason      VARCHAR NOT NULL,
    detail      VARCHAR,
    stage       VARCHAR DEFAULT 'ingest',
    "at"        TIMESTAMP DEFAULT current_timestamp,
    source      VARCHAR
);
CREATE TABLE IF NOT EXISTS captions (
    post_id     BIGINT PRIMARY KEY,
    caption     VARCHAR NOT NULL,
    tags        VARCHAR[] NOT NULL,
    groups      VARCHAR[] NOT NULL,
    tokens      INTEGER,
    built_at    TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE IF NOT EXISTS settings (
    key         VARCHAR PRIMARY KEY,
    value       VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS recommended_tags (
    subset      VARCHAR NOT NULL,
    rank        INTEGER NOT NULL,
    tag         VARCHAR NOT NULL,
    jaccard     DOUBLE NOT NULL,
    count       BIGINT NOT NULL,
    built_at    TIMESTAMP DEFAULT current_timestamp
);
"""


class CatalogBusyError(WorkspaceError):
    """Another process holds the catalog (DuckDB allows one writer, or readers only)."""


def connect(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (and create, unless read-only) the catalog with its schema in place."""
    path = Path(path)
    if read_only and not path.exists():
        raise WorkspaceError("no catalog yet", file=path, hint="run `tagtune ingest` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise WorkspaceError(
                f"not a usable catalog: {str(exc).splitlines()[0]}",
                file=path,
                hint="move it aside and run `tagtune ingest` again to rebuild it",
            ) from None
        raise CatalogBusyError(
            "the catalog is in use by another tagtune process",
            file=path,
            hint="wait for it to finish, then run this again",
        ) from None
    if not read_only:
        con.execute(SCHEMA)
    return con


@contextlib.contextmanager
def open_catalog(path: str | Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Context-managed `connect` that always closes the file."""
    con = connect(path, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def subset_where(subset: str, field: str = "subset") -> str:
    """SQL condition over `posts` for a subset: all, favorites, or a user WHERE clause.

    A user clause is parsed and rendered again by `subset_sql.render_clause` (never passed
    through as text); `field` names where it came from for the error. Excluded posts
    (safety filter) are never part of any subset: that test stays outside the clause.
    """
    s = subset.strip()
    if s in ("", "all"):
        cond = "TRUE"
    elif s == "favorites":
        cond = "posts.favorite"
    else:
        cond = render_clause(s, field)
    return f"posts.excluded IS NULL AND ({cond})"


def check_subset(con: duckdb.DuckDBPyConnection, subset: str, field: str = "subset") -> str:
    """`subset_where`, run once so a clause DuckDB cannot bind (a type mismatch) is an
    InputError naming `field` and the clause; returns the condition."""
    where = subset_where(subset, field)
    try:
        con.execute(f"SELECT count(*) FROM posts WHERE {where}").fetchone()
    except duckdb.Error as exc:
        raise InputError(
            f"invalid subset WHERE clause: {exc}".splitlines()[0], field=field, value=subset
        ) from None
    return where


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, or ROLLBACK on any error: a change is made whole or not at all."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
