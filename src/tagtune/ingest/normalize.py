"""One SQL normalisation from raw post JSON to catalog rows, for every source kind.

Every reader produces the same relation `_raw(rec, path, line, raw JSON, file)`: path, line and
rec (a record number, NULL for dumps where numbering a million rows would cost a pass) name
where a record came from; file is the paired image (folder sources).
This module turns it into typed post columns inside DuckDB, so a million-post dump never
passes through Python one post at a time.

Field rules (docs/design.md): tag strings are split into normal tags by the one tag normaliser
(`tag_normalize`: NFKC, any whitespace separates, hidden characters removed and reported);
gallery-dl's `tags_*` lists win when present and are normalised the same way; `date` is the calendar date as written in created_at (its own offset, not UTC), or
gallery-dl's UTC `date` when created_at is missing; `rating_raw` is as read and `rating` is its
modern meaning (with legacy_ratings, an old `s` meant safe and becomes `g`).
"""

from __future__ import annotations

from tagtune.ingest.safety import blocked_hits_sql, blocked_sql, safety_rating_sql
from tagtune.ingest.sources import post_id_sql
from tagtune.ingest.tag_normalize import split_tags_sql, tidy_sql
from tagtune.recipe.model import SafetyConfig

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


def _split(expr: str, field: str, split_fn: str, tidy: str | None = None) -> str:
    """A tag string as normal tags: DuckDB splits tidy strings, `split_fn` (the name
    `tag_normalize.sql_functions` registered) the rest; `tidy` as in `split_tags_sql`."""
    return split_tags_sql(expr, _v("id"), field, split_fn, tidy)


def _group(g: str, split_fn: str) -> str:
    """A tag group: gallery-dl's list if present, else the split tag string; never NULL.

    A list is normalised as its elements joined by spaces (whitespace inside an element
    separates tags, as in a string). A record with no category fields at all (a dump with
    only `tag_string`) puts every tag in the general group. The test for that reads the
    extracted strings, not the lists.
    """
    lst = f"array_to_string(try_cast(CAST({_v(f'tags_{g}')} AS JSON) AS VARCHAR[]), ' ')"
    fallback = ""
    if g == "general":
        no_groups = " AND ".join(
            f"{_v(f'tags_{x}')} IS NULL AND {_v(f'tag_string_{x}')} IS NULL" for x in GROUPS
        )
        whole = _split(_v("tag_string"), "tag_string", split_fn)
        fallback = f"CASE WHEN {no_groups} THEN {whole} END, "
    listed = _split(lst, f"tags_{g}", split_fn)
    string = _split(_v(f"tag_string_{g}"), f"tag_string_{g}", split_fn, f"tidy_{g}")
    return f"coalesce({listed}, {string}, {fallback}[]::VARCHAR[])"


def renormalize_sql(group: str, split_fn: str) -> str:
    """UPDATE that normalises one stored tag group again where it is not tidy (a catalog
    ingested before the tag normaliser); `split_fn` as for `_split`."""
    col = f"tags_{group}"
    text = f"array_to_string({col}, ' ')"
    return (
        f"UPDATE posts SET {col} = {split_fn}(CAST(id AS VARCHAR), '{col}', {text}) "
        f"WHERE len({col}) > 0 AND NOT {tidy_sql(text)}"
    )


def normalized_sql(raw: str, split_fn: str) -> str:
    """SELECT of typed post columns (plus rec, path, line, file) over the raw relation;
    `split_fn` is the tag normaliser's name from `tag_normalize.sql_functions`."""
    paths = ", ".join(f"'$.{p}'" for p in PATHS)
    groups = ",\n        ".join(f"{_group(g, split_fn)} AS tags_{g}" for g in GROUPS)
    tidy = ", ".join(f"{tidy_sql(_v(f'tag_string_{g}'))} AS tidy_{g}" for g in GROUPS)
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
        {groups},
        {_plain()} AS plain_tags
    FROM (SELECT *, {tidy} FROM
          (SELECT *, json_extract_string(raw, [{paths}]) AS v FROM {raw}))
    """


def _plain() -> str:
    """SQL boolean: every tag came from a tidy group string (no gallery-dl list, not the
    `tag_string` fallback), so each tag's filter key is its lower case (`TIDY_PATTERN`)."""
    lists = [f"{_v(f'tags_{g}')} IS NULL" for g in GROUPS]
    tidy = [f"({_v(f'tag_string_{g}')} IS NULL OR tidy_{g})" for g in GROUPS]
    any_group = " OR ".join(f"{_v(f'tag_string_{g}')} IS NOT NULL" for g in GROUPS)
    return " AND ".join([*lists, *tidy, f"({any_group})"])


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
    lists = [f"tags_{g}" for g in GROUPS]
    hits = (
        f"CASE WHEN plain_tags THEN {blocked_hits_sql(lists, safety, plain=True)} "
        f"ELSE {blocked_hits_sql(lists, safety)} END"
    )
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
