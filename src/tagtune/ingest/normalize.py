"""One SQL normalisation from raw post JSON to catalog rows, for every source kind.

Every reader produces the same relation `_raw(rec, path, line, raw JSON, file)`: path, line and
rec (a record number, NULL for dumps where numbering a million rows would cost a pass) name
where a record came from; file is the paired image (folder sources).
This module turns it into typed post columns inside DuckDB, so a million-post dump never
passes through Python one post at a time.

Field rules (DESIGN.md): tag strings are split on spaces; gallery-dl's `tags_*` lists win when
present; `date` is the calendar date as written in created_at (its own offset, not UTC), or
gallery-dl's UTC `date` when created_at is missing; `rating_raw` is as read and `rating` is its
modern meaning (with legacy_ratings, an old `s` meant safe and becomes `g`).
"""

from __future__ import annotations

from tagtune.ingest.sources import post_id_sql
from tagtune.recipe import SafetyConfig
from tagtune.safety import blocked_hits_sql, blocked_sql, safety_rating_sql

GROUPS = ("artist", "copyright", "character", "general", "meta")
PATHS = (
    "id",
    "md5",
    "created_at",
    "date",
    "score",
    "fav_count",
    "rating",
    "file_ext",
    "image_width",
    "image_height",
    "parent_id",
    "is_deleted",
    "tag_string",
    *(f"tag_string_{g}" for g in GROUPS),
    *(f"tags_{g}" for g in GROUPS),
)
_I = {name: i + 1 for i, name in enumerate(PATHS)}  # DuckDB lists are 1-based


def _v(name: str) -> str:
    return f"v[{_I[name]}]"


def _split(expr: str) -> str:
    """Split a space-separated tag string; the slower cleaning runs only on untidy strings."""
    untidy = f"contains({expr}, '  ') OR starts_with({expr}, ' ') OR ends_with({expr}, ' ')"
    return (
        f"(CASE WHEN {untidy} THEN list_filter(string_split(trim({expr}), ' '), lambda x: x <> '') "
        f"WHEN {expr} = '' THEN []::VARCHAR[] ELSE string_split({expr}, ' ') END)"
    )


def _group(g: str) -> str:
    """A tag group: gallery-dl's list if present, else the split tag string; never NULL.

    A record with no category fields at all (a dump with only `tag_string`) puts every tag
    in the general group. The test for that reads the extracted strings, not the lists.
    """
    lst = f"try_cast(CAST({_v(f'tags_{g}')} AS JSON) AS VARCHAR[])"
    fallback = ""
    if g == "general":
        no_groups = " AND ".join(
            f"{_v(f'tags_{x}')} IS NULL AND {_v(f'tag_string_{x}')} IS NULL" for x in GROUPS
        )
        fallback = f"CASE WHEN {no_groups} THEN {_split(_v('tag_string'))} END, "
    return f"coalesce({lst}, {_split(_v(f'tag_string_{g}'))}, {fallback}[]::VARCHAR[])"


def normalized_sql(raw: str = "_raw") -> str:
    """SELECT of typed post columns (plus rec, path, line, file) over the raw relation."""
    paths = ", ".join(f"'$.{p}'" for p in PATHS)
    groups = ",\n        ".join(f"{_group(g)} AS tags_{g}" for g in GROUPS)
    return f"""
    SELECT rec, path, line, file, raw,
        {post_id_sql(_v("id"))} AS id,
        lower(nullif({_v("md5")}, '')) AS md5,
        {_v("created_at")} AS created_at,
        coalesce(try_cast(left({_v("created_at")}, 10) AS DATE),
                 try_cast(left({_v("date")}, 10) AS DATE)) AS date,
        try_cast({_v("score")} AS INTEGER) AS score,
        try_cast({_v("fav_count")} AS INTEGER) AS fav_count,
        {_v("rating")} AS rating_raw,
        lower(nullif({_v("file_ext")}, '')) AS file_ext,
        try_cast({_v("image_width")} AS INTEGER) AS image_width,
        try_cast({_v("image_height")} AS INTEGER) AS image_height,
        try_cast({_v("parent_id")} AS BIGINT) AS parent_id,
        try_cast({_v("is_deleted")} AS BOOLEAN) AS is_deleted,
        {groups}
    FROM (SELECT *, json_extract_string(raw, [{paths}]) AS v FROM {raw})
    """


def rating_sql(raw: str, legacy_ratings: bool) -> str:
    """SQL for the modern rating letter from the rating as read (old `s` = safe -> `g` if legacy)."""
    rating = safety_rating_sql(raw)
    return f"(CASE WHEN {rating} = 's' THEN 'g' ELSE {rating} END)" if legacy_ratings else rating


def posts_select_sql(
    norm: str,
    legacy_ratings: bool,
    safety: SafetyConfig | None,
    source: str,
    all_have_ids: bool = False,
) -> str:
    """SELECT of `posts` columns from the normalised relation: rating mapping and safety filter.

    Records without a valid id are dropped; `all_have_ids` (known from the reader's pass)
    leaves the filter out, which DuckDB would otherwise run as a second JSON parse.
    """
    mapped = rating_sql("rating_raw", legacy_ratings)
    hits = blocked_hits_sql([f"tags_{g}" for g in GROUPS], safety)
    src = source.replace("'", "''")
    return f"""
    SELECT id, md5, created_at, date, score, fav_count, {mapped} AS rating, rating_raw,
        file_ext, image_width, image_height,
        tags_artist, tags_copyright, tags_character, tags_general, tags_meta,
        parent_id, is_deleted, '{src}' AS source, raw,
        {blocked_sql("hits", "rating_raw", safety)} AS excluded
    FROM (SELECT *, {hits} AS hits FROM {norm} {"" if all_have_ids else "WHERE id IS NOT NULL"})
    """


POST_COLUMNS = (
    "id, md5, created_at, date, score, fav_count, rating, rating_raw, file_ext, image_width, "
    "image_height, tags_artist, tags_copyright, tags_character, tags_general, tags_meta, "
    "parent_id, is_deleted, source, raw, excluded"
)
