"""The recipe's verdicts on the catalog: re-judge every post when the safety lists or the
rating setting change, and remember which settings the catalog was judged with.

Ingest judges each post once, as it inserts it; caption and train call `sync_with_recipe`
first, so a recipe change reaches every post before anything is built from the catalog.
"""

from __future__ import annotations

import json

import duckdb

from tagtune.core.catalog import transaction
from tagtune.ingest.normalize import GROUPS, rating_sql, renormalize_sql
from tagtune.ingest.safety import CAPTION_VERDICT, blocked_hits_sql, blocked_lists, blocked_sql
from tagtune.ingest.tag_normalize import TAG_RULES, sql_functions
from tagtune.recipe.model import Recipe


def refresh_safety(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> int:
    """Re-judge every post already in the catalog with the recipe's current safety lists and
    rating setting (`ingest.legacy_ratings`).

    Posts are inserted once, so without this a tag added to the recipe later would never
    reach them. Stored tags that are not tidy are normalised again first (a catalog from
    before the tag normaliser). Newly excluded posts lose their file row and caption. A
    verdict on a built caption (`safety.CAPTION_VERDICT`) stays until caption judges again.
    Caption and train call this too, so a recipe change takes effect before anything is
    built from the catalog. Returns how many posts changed their exclusion.
    """
    hits = blocked_hits_sql([f"tags_{g}" for g in GROUPS], recipe.safety)
    verdict = blocked_sql("hits", "rating_raw", recipe.safety)
    rating = rating_sql("rating_raw", recipe.ingest.legacy_ratings)
    by_caption = f"starts_with(coalesce(posts.excluded, ''), '{CAPTION_VERDICT}')"
    listed = set().union(*blocked_lists(recipe.safety))
    with transaction(con), sql_functions(con, blocked=listed) as split_fn:
        for g in GROUPS:
            con.execute(renormalize_sql(g, split_fn)).fetchall()
        con.execute(
            f"UPDATE posts SET rating = {rating} WHERE rating IS DISTINCT FROM {rating}"
        ).fetchall()
        changed = con.execute(
            f"UPDATE posts SET excluded = v.reason FROM (SELECT id, {verdict} AS reason FROM "
            f"(SELECT id, rating_raw, {hits} AS hits FROM posts)) v "
            "WHERE posts.id = v.id AND posts.excluded IS DISTINCT FROM v.reason "
            f"AND NOT (v.reason IS NULL AND {by_caption})"
        ).fetchone()[0]
        for table in ("files", "captions"):
            con.execute(
                f"DELETE FROM {table} WHERE post_id IN "
                f"(SELECT id FROM posts WHERE excluded IS NOT NULL AND NOT {by_caption})"
            ).fetchall()
    return int(changed)


def judged_with(recipe: Recipe) -> str:
    """The recipe settings that decide `posts.excluded` and `posts.rating`, as one string."""
    always, unless_general = blocked_lists(recipe.safety)
    return json.dumps(
        {"always": sorted(always), "unless_general": sorted(unless_general),
         "legacy_ratings": recipe.ingest.legacy_ratings, "tag_rules": TAG_RULES},
        sort_keys=True,
    )  # fmt: skip


def catalog_is_current(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> bool:
    """True when the catalog's posts were judged with the recipe's current safety and ratings."""
    try:
        rows = con.execute("SELECT value FROM settings WHERE key = 'judged_with'").fetchall()
    except duckdb.CatalogException:  # a catalog from before the settings table
        return False
    return bool(rows) and rows[0][0] == judged_with(recipe)


def sync_with_recipe(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> int:
    """Re-judge the catalog (`refresh_safety`) when the recipe's safety lists or
    `legacy_ratings` changed since it was last judged; returns how many posts changed."""
    if catalog_is_current(con, recipe):
        return 0
    changed = refresh_safety(con, recipe)
    con.execute("INSERT OR REPLACE INTO settings VALUES ('judged_with', ?)", [judged_with(recipe)])
    return changed
