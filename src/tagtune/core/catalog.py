"""The workspace catalog: a DuckDB file holding posts, image files, captions, problems and tags.

Every stage reads and writes here; it is the one source of truth for what enters training.

Tables
- posts: one row per Danbooru post (metadata only is fine: `file` may be null).
  Tag lists keep Danbooru's names (underscores) in Danbooru's alphabetical order.
  `rating` is the modern meaning (g/s/q/e) used by captions; `rating_raw` is as read.
  `date` is the calendar date as written in created_at (its own offset).
  `excluded` is null for posts that may enter training, else the reason (safety filter).
  `origin` says where the post came from: `danbooru` (metadata), `kohya-folder` (a folder of
  images with caption files) or `dataset-toml` (an sd-scripts dataset TOML). Caption-file
  posts (`ingest.caption_files`) have negative ids (minus 1 + the first 60 bits of the
  image's MD5: stable, never a Danbooru id), their image's `folder` name, its `concept`
  and `repeats` (`10_mychar`: 10, `mychar`), `caption_tags` (the caption file's tags as
  written, in file order: the caption), `keep_tokens` (tags kept in front), and their tags
  in Danbooru form (underscores) in `tags_general` for analytics and the safety filter.
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
from tagtune.core.subsets import SUBSET_ALLOWED, SubsetOrigin, render_clause

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
    ingested_at     TIMESTAMP DEFAULT current_timestamp,
    origin          VARCHAR DEFAULT 'danbooru',
    folder          VARCHAR,
    concept         VARCHAR,
    repeats         INTEGER DEFAULT 1,
    caption_tags    VARCHAR[],
    keep_tokens     INTEGER
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

MIGRATIONS = """
ALTER TABLE posts ADD COLUMN IF NOT EXISTS origin VARCHAR DEFAULT 'danbooru';
ALTER TABLE posts ADD COLUMN IF NOT EXISTS folder VARCHAR;
ALTER TABLE posts ADD COLUMN IF NOT EXISTS concept VARCHAR;
ALTER TABLE posts ADD COLUMN IF NOT EXISTS repeats INTEGER DEFAULT 1;
ALTER TABLE posts ADD COLUMN IF NOT EXISTS caption_tags VARCHAR[];
ALTER TABLE posts ADD COLUMN IF NOT EXISTS keep_tokens INTEGER;
"""
"""Columns added since the first catalogs (caption-file posts): a catalog written before
them gets them on its next writable open (Danbooru posts: origin `danbooru`, 1 repeat)."""


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
        con.execute(MIGRATIONS)
    elif _needs_migration(con):  # migrate once, then read as asked
        con.close()
        connect(path).close()
        return connect(path, read_only=True)
    return con


def _needs_migration(con: duckdb.DuckDBPyConnection) -> bool:
    """True for a catalog whose posts table lacks a column MIGRATIONS adds."""
    cols = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'posts'"
        ).fetchall()
    }
    return bool(cols) and "keep_tokens" not in cols


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


def check_subset(
    con: duckdb.DuckDBPyConnection, subset: str, field: str | SubsetOrigin = "subset"
) -> str:
    """`subset_where`, run once so a clause DuckDB cannot bind (a type mismatch) is an
    InputError naming `field` and the clause; returns the condition. Every error lists what a
    clause may use; with a `SubsetOrigin` it also names the recipe file and the stage."""
    origin = field if isinstance(field, SubsetOrigin) else SubsetOrigin(field)
    try:
        where = subset_where(subset, origin.field)
        try:
            con.execute(f"SELECT count(*) FROM posts WHERE {where}").fetchone()
        except duckdb.Error as exc:
            raise InputError(
                f"invalid subset WHERE clause: {exc}".splitlines()[0],
                field=origin.field,
                value=subset,
                allowed=SUBSET_ALLOWED,
            ) from None
    except InputError as exc:
        if origin.file is None and origin.stage is None:
            raise
        where_from = f"stage {origin.stage!r}: " if origin.stage else ""
        raise InputError(
            where_from + exc.reason,
            file=origin.file,
            field=exc.field,
            value=exc.value,
            allowed=exc.allowed,
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
