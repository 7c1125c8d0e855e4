"""`tagtune ingest`: read each SOURCE into the workspace catalog, check images, mark favorites.

Per source, in one transaction: read records (`sources`), insert the posts not yet in the
catalog with their rating and safety verdict (`normalize`), check the images of posts that
have no file yet (`images`), and replace the problems recorded for that source. So re-running
the same sources changes nothing, and a new source adds only what is new.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import duckdb

from tagtune.core.catalog import open_catalog, transaction
from tagtune.core.errors import InputError
from tagtune.core.workspace import Workspace
from tagtune.ingest.caption_posts import finish_caption_files, scan_caption_files
from tagtune.ingest.favorites import FavoritesResult, mark_favorites
from tagtune.ingest.images import index_images
from tagtune.ingest.normalize import (
    POST_COLUMNS,
    normalized_sql,
    posts_select_sql,
)
from tagtune.ingest.record_checks import (
    bad_records,
    duplicate_ids,
    hidden_characters,
    keep_first_ids,
    name_record_files,
    odd_fields,
)
from tagtune.ingest.report import catalog_summary
from tagtune.ingest.safety import blocked_lists
from tagtune.ingest.sources import (
    Problem,
    detect_kind,
    open_jsonl_strict,
    post_id_sql,
    read_dump,
    read_folder,
    read_parquet_groups,
)
from tagtune.ingest.tag_normalize import sql_functions
from tagtune.ingest.verdicts import sync_with_recipe
from tagtune.ingest.writes import FILE_COLUMNS, check_files, insert_rows, record_problems
from tagtune.recipe.model import Recipe
from tagtune.recipe.workspace import workspace_recipe


def _drop_raw(con: duckdb.DuckDBPyConnection) -> None:
    for stmt in (
        "DROP VIEW IF EXISTS _norm",
        "DROP VIEW IF EXISTS _raw_first",
        "DROP TABLE IF EXISTS _raw_ids",
        "DROP VIEW IF EXISTS _raw",
        "DROP TABLE IF EXISTS _raw",
        "DROP VIEW IF EXISTS _raw_all",
        "DROP TABLE IF EXISTS _raw_stats",
        "DROP TABLE IF EXISTS _idx",
    ):
        with contextlib.suppress(duckdb.Error):
            con.execute(stmt)


def _candidates(
    con: duckdb.DuckDBPyConnection, kind: str, images: Path | None, raw: str = "_raw"
) -> list[tuple[int, str | None, str]]:
    """(post id, md5, image path) to check: included posts of this source with no file yet.

    Ordered by post id, so of two posts with the same image the older one keeps it.
    """
    todo = (
        "JOIN posts p ON p.id = c.id WHERE p.excluded IS NULL "
        "AND c.id NOT IN (SELECT post_id FROM files) ORDER BY c.id, c.path_img"
    )
    if kind == "folder":
        sql = (
            "SELECT c.id, p.md5, c.path_img FROM (SELECT id, file AS path_img FROM _norm "
            f"WHERE file IS NOT NULL AND id IS NOT NULL) c {todo}"
        )
        return con.execute(sql).fetchall()
    if images is None:
        return []
    import pyarrow as pa

    idx = index_images(images)
    if not idx:
        return []
    kinds, keys, paths = zip(*idx, strict=True)
    con.register("_idx_py", pa.table({"kind": kinds, "key": keys, "path": paths}))
    con.execute("CREATE OR REPLACE TEMP TABLE _idx AS SELECT * FROM _idx_py")
    con.unregister("_idx_py")
    ids = (
        f"SELECT {post_id_sql('id_text')} AS id, md5 FROM (SELECT "
        "json_extract_string(raw, '$.id') AS id_text, "
        f"lower(json_extract_string(raw, '$.md5')) AS md5 FROM {raw})"
    )
    sql = f"""
        SELECT c.id, p.md5, c.path_img FROM (
            SELECT r.id, coalesce(min(m.path), min(i.path)) AS path_img
            FROM ({ids}) r
            LEFT JOIN _idx m ON m.kind = 'md5' AND m.key = r.md5
            LEFT JOIN _idx i ON i.kind = 'id' AND i.key = CAST(r.id AS VARCHAR)
            WHERE r.id IS NOT NULL AND (m.path IS NOT NULL OR i.path IS NOT NULL)
            GROUP BY r.id
        ) c {todo}
    """
    return con.execute(sql).fetchall()


def _has_raw(con: duckdb.DuckDBPyConnection) -> bool:
    try:
        con.execute("SELECT 1 FROM _raw LIMIT 0")
        return True
    except duckdb.Error:
        return False


def _id_stats(con: duckdb.DuckDBPyConnection) -> tuple[int, int, int]:
    """(records, records with an id, distinct ids) of `_raw`: the reader's, or a narrow pass."""
    try:
        row = con.execute("SELECT n, n_ids, n_distinct FROM _raw_stats").fetchone()
    except duckdb.Error:
        row = con.execute(
            f"SELECT count(*), count(id), count(DISTINCT id) FROM (SELECT {post_id_sql('t')} "
            "AS id FROM (SELECT json_extract_string(raw, '$.id') AS t FROM _raw))"
        ).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def _insert_posts(con: duckdb.DuckDBPyConnection, select: str) -> None:
    """Insert the posts of `select` (unique ids) that are not in the catalog yet.

    A plain anti-join insert, much cheaper than ON CONFLICT on a million rows; a source
    that repeats an id was cut to the first record of each id before (`keep_first_ids`),
    and on the fast path a repeat fails the primary key and sends the source the careful way.
    """
    con.execute(
        f"INSERT INTO posts ({POST_COLUMNS}) SELECT * FROM ({select}) "
        "WHERE id NOT IN (SELECT id FROM posts)"
    )


def ingest_source(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    recipe: Recipe,
    images: Path | None = None,
    progress: Any = None,
) -> dict[str, int]:
    """Ingest one SOURCE into an open catalog; returns what it added (posts, images, problems)."""
    kind = detect_kind(source)
    key = str(source.resolve())
    before = con.execute("SELECT count(*) FROM posts").fetchone()[0]
    files_before = con.execute("SELECT count(*) FROM files").fetchone()[0]
    # zstd for this write: about a third less CPU than the default string compression on
    # raw JSON, and a smaller file
    con.execute("SET force_compression = 'zstd'")
    scan = scan_caption_files(source, kind, recipe.ingest.caption_files)
    try:
        problems = _fast_jsonl(con, source, key, recipe, images, progress)
        if problems is None and kind != "dataset-toml":
            skip = {str(i.image) for i in scan.images} if scan else set()
            problems = _careful(con, source, kind, key, recipe, images, progress, skip)
        if scan is not None:
            problems = finish_caption_files(con, scan, key, kind, recipe, problems or [], progress)
    finally:
        con.execute("RESET force_compression")
        _drop_raw(con)
    after = con.execute("SELECT count(*) FROM posts").fetchone()[0]
    files_added = con.execute("SELECT count(*) FROM files").fetchone()[0] - files_before
    return {"posts": after - before, "images": files_added, "problems": len(problems)}


def _fast_jsonl(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    key: str,
    recipe: Recipe,
    images: Path | None,
    progress: Any,
) -> list[Problem] | None:
    """A clean JSONL dump in one pass: strict parsing, and the catalog's own constraints
    (id NOT NULL, PRIMARY KEY) catch a missing or repeated id. None means: not clean, the
    transaction was rolled back, use the careful path."""
    if detect_kind(source) != "jsonl":
        return None
    _drop_raw(con)
    open_jsonl_strict(con, source)
    problems: list[Problem] = []
    try:
        with transaction(con):
            _write_source(con, "jsonl", key, recipe, images, progress, problems, None)
    except (duckdb.ConstraintException, duckdb.InvalidInputException):
        return None
    return problems


def _careful(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    kind: str,
    key: str,
    recipe: Recipe,
    images: Path | None,
    progress: Any,
    skip: set[str] | None = None,
) -> list[Problem]:
    """Any source, any mess: bad lines skipped and named, ids checked first, then written.
    `skip`: images of a folder that are read as caption-file posts instead."""
    _drop_raw(con)
    # read first, outside the transaction: a probe DuckDB rejects must not abort it
    if kind == "folder":
        problems = read_folder(con, source, skip or ())
    else:
        problems = read_dump(con, source, kind)
    if not _has_raw(con):
        with transaction(con):
            record_problems(con, key, problems)
        return problems
    try:
        stats = _id_stats(con)
        found = list(problems)
        with transaction(con):
            _write_source(con, kind, key, recipe, images, progress, found, stats)
        return found
    except duckdb.Error:
        if kind != "parquet":
            raise
    # a Parquet dump DuckDB failed on mid-way (a corrupt data page): read what decodes,
    # one row group at a time, and name the rest
    _drop_raw(con)
    problems = read_parquet_groups(con, source)
    stats = _id_stats(con)
    with transaction(con):
        _write_source(con, kind, key, recipe, images, progress, problems, stats)
    return problems


def _write_source(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    key: str,
    recipe: Recipe,
    images: Path | None,
    progress: Any,
    problems: list[Problem],
    stats: tuple[int, int, int] | None,
) -> None:
    """Inside the source's transaction: posts, files, then the problems (appended to
    `problems`). `stats` None: the fast path, every record is assumed to have a unique id."""
    n, n_ids, n_distinct = stats or (0, 0, 0)
    raw = "_raw"
    if n_ids != n_distinct:  # a repeated id: the first record of each id is kept
        keep_first_ids(con)
        raw = "_raw_first"
    hidden: dict = {}  # tag strings with control or invisible characters (tag_normalize)
    listed = set().union(*blocked_lists(recipe.safety))
    with sql_functions(con, hidden, listed) as split_fn:
        con.execute(f"CREATE OR REPLACE TEMP VIEW _norm AS {normalized_sql(raw, split_fn)}")
        select = posts_select_sql(
            "_norm", recipe.ingest.legacy_ratings, recipe.safety, key, all_have_ids=n_ids == n
        )
        _insert_posts(con, select)
        if n_ids < n:
            problems += bad_records(con, kind)
        if n_ids != n_distinct:
            problems += duplicate_ids(con, kind)
        found = odd_fields(con, key) + hidden_characters(hidden, key)
        problems += name_record_files(con, raw, found)  # the sidecar, not the folder
        cands = _candidates(con, kind, images, raw)
        rows, file_problems = check_files(con, cands, recipe, progress)
    problems += file_problems
    insert_rows(con, "files", FILE_COLUMNS, rows)
    record_problems(con, key, problems)


def ingest(
    ws: Workspace,
    sources: list[Path],
    images: Path | None = None,
    favorites: Path | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Ingest SOURCEs (and mark favorites) into the workspace catalog; return the summary.

    The summary is `{"posts", "images", "favorites", "excluded": {reason: N},
    "problems": {reason: N}}` over the whole catalog (so a re-run prints the same), plus
    `"added"`: what this run added per source. Image paths are stored absolute, so later
    stages find them whatever folder they run from.
    """
    recipe = workspace_recipe(ws)
    sources = [Path(src).expanduser().resolve() for src in sources]
    images = Path(images).expanduser().resolve() if images is not None else None
    for src in sources:
        detect_kind(src)  # a mistyped path fails before anything is written
    if images is not None and not Path(images).is_dir():
        raise InputError("images folder not found", file=images, field="images")
    if favorites is not None and not Path(favorites).is_file():
        raise InputError("favorites list not found", file=favorites, field="favorites")
    added: dict[str, dict[str, int]] = {}
    with open_catalog(ws.catalog_path) as con:
        sync_with_recipe(con, recipe)
        for src in sources:
            task = progress.add_task(f"reading {Path(src).name}", total=None) if progress else None
            added[str(src)] = ingest_source(con, Path(src), recipe, images, progress)
            if task is not None:
                progress.remove_task(task)
        if favorites is not None:
            apply_favorites(con, Path(favorites))
        summary = catalog_summary(con)
    summary["added"] = added
    return summary


def apply_favorites(
    con: duckdb.DuckDBPyConnection, path: Path, replace: bool = False
) -> FavoritesResult:
    """Mark favorites from a file and record its unknown and invalid lines as problems."""
    with transaction(con):
        result = mark_favorites(con, path, replace=replace)
        _record_favorite_problems(con, path, result)
    return result


def _record_favorite_problems(
    con: duckdb.DuckDBPyConnection, path: Path, result: FavoritesResult
) -> None:
    problems = [
        Problem(
            str(path), e.post_id, "unknown-favorite", f"line {e.line}: {e.text} matches no post"
        )
        for e in result.unknown
    ] + [
        Problem(str(path), None, "bad-metadata", f"line {e.line}: {e.text!r} is not an id or md5")
        for e in result.invalid
    ]
    record_problems(con, str(path.resolve()), problems)


def update_favorites(ws: Workspace, path: Path, replace: bool = False) -> FavoritesResult:
    """Re-mark a workspace's favorites from a list, without re-ingesting anything."""
    path = Path(path)
    if not path.is_file():
        raise InputError("favorites list not found", file=path)
    with open_catalog(ws.catalog_path) as con:
        return apply_favorites(con, path, replace=replace)
