"""The minor-safety filter (DESIGN.md, "Responsible use"): always on, never shrinkable.

A post whose tags mark an apparent minor never enters training. The filter reads tags (not
md5 or files: restricted posts often lack md5). Some tags are blocked at any rating; others
are blocked unless the rating is g. The recipe may only ADD tags to either list.

The same rule exists twice: `blocked_reason` for one post in Python, and `blocked_sql` for a
whole dump inside DuckDB (a million posts cannot go through Python one by one). Tests check
that both give the same answer on the same table of cases.
"""

from __future__ import annotations

from collections.abc import Iterable

from tagtune.recipe import SafetyConfig

ALWAYS_BLOCKED: tuple[str, ...] = ("loli", "shota", "toddlercon", "oppai_loli")
"""Blocked at any rating."""

BLOCKED_UNLESS_GENERAL: tuple[str, ...] = (
    "child",
    "female_child",
    "male_child",
    "toddler",
    "baby",
    "aged_down",
)
"""Blocked when the rating is s, q, e or missing (allowed only at g)."""

_RATING_WORDS = {
    "general": "g",
    "safe": "s",
    "sensitive": "s",
    "questionable": "q",
    "explicit": "e",
}


def normalize_tag(tag: str) -> str:
    """A user-written tag in Danbooru form: trimmed, lower case, spaces as underscores."""
    return "_".join(tag.strip().lower().split())


def _extend(base: Iterable[str], extra: Iterable[str]) -> tuple[str, ...]:
    out = list(base)
    for tag in extra:
        t = normalize_tag(tag)
        if t and t not in out:
            out.append(t)
    return tuple(out)


def blocked_lists(
    recipe_safety: SafetyConfig | None = None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(always blocked, blocked unless rating g): the house lists plus the recipe's extra tags."""
    s = recipe_safety or SafetyConfig()
    return (
        _extend(ALWAYS_BLOCKED, s.extra_blocked_tags),
        _extend(BLOCKED_UNLESS_GENERAL, s.extra_blocked_unless_general),
    )


def safety_rating(rating_raw: str | None) -> str | None:
    """The rating letter the filter judges by: the raw letter as read, never the legacy mapping.

    With `legacy_ratings`, an old `s` (safe) becomes `g` for captions, but it still counts as
    `s` here: old safe included today's sensitive. Words (`safe`, `explicit`) map to letters.
    """
    if rating_raw is None:
        return None
    r = rating_raw.strip().lower()
    if not r:
        return None
    return _RATING_WORDS.get(r, r)


def blocked_reason(
    tags: Iterable[str],
    rating_raw: str | None,
    recipe_safety: SafetyConfig | None = None,
    legacy: bool = False,
) -> str | None:
    """Why a post must never enter training, or None when it may.

    `tags` are the post's Danbooru tags of every category (compared case-insensitively,
    stricter than Danbooru's all-lower-case names). `legacy` is accepted for clarity
    but changes nothing: the filter always reads the raw rating letter (see safety_rating).
    """
    del legacy  # an old `s` counts as s for this filter, exactly like a modern one
    always, unless_general = blocked_lists(recipe_safety)
    tag_set = {t.lower() for t in tags}
    for tag in always:
        if tag in tag_set:
            return f"safety: blocked tag {tag}"
    rating = safety_rating(rating_raw)
    if rating == "g":
        return None
    for tag in unless_general:
        if tag in tag_set:
            return f"safety: blocked tag {tag} with rating {rating or 'missing'}"
    return None


def _sql_list(tags: Iterable[str]) -> str:
    return "[" + ", ".join("'" + t.replace("'", "''") + "'" for t in tags) + "]::VARCHAR[]"


def safety_rating_sql(rating_expr: str) -> str:
    """SQL twin of safety_rating over a VARCHAR expression."""
    words = " ".join(f"WHEN '{w}' THEN '{c}'" for w, c in _RATING_WORDS.items())
    r = f"nullif(lower(trim({rating_expr})), '')"
    return f"(CASE {r} {words} ELSE {r} END)"


def blocked_hits_sql(list_exprs: Iterable[str], recipe_safety: SafetyConfig | None = None) -> str:
    """SQL VARCHAR[]: the tags (lower-cased) of these tag-list expressions that are listed.

    A cheap first pass (one IN test per tag, about 0.2 CPU-seconds per 100,000 posts);
    blocked_sql then only looks at these few tags. Tags compare case-insensitively.
    """
    always, unless_general = blocked_lists(recipe_safety)
    in_list = ", ".join("'" + t.replace("'", "''") + "'" for t in (*always, *unless_general))
    parts = [
        f"list_filter(coalesce({e}, []::VARCHAR[]), lambda x: lower(x) IN ({in_list}))"
        for e in list_exprs
    ]
    hits = parts[0] if len(parts) == 1 else f"list_concat({', '.join(parts)})"
    return f"list_transform({hits}, lambda x: lower(x))"


def blocked_sql(tags_expr: str, rating_expr: str, recipe_safety: SafetyConfig | None = None) -> str:
    """SQL twin of blocked_reason: a VARCHAR expression, NULL when the post may be used.

    `tags_expr` is a VARCHAR[] of the post's tags (for speed, the output of blocked_hits_sql);
    `rating_expr` the raw rating. Names the first listed tag found, like blocked_reason.
    """
    always, unless_general = blocked_lists(recipe_safety)
    a, u = _sql_list(always), _sql_list(unless_general)
    rating = safety_rating_sql(rating_expr)
    first_a = f"list_filter({a}, lambda t: list_contains({tags_expr}, t))[1]"
    first_u = f"list_filter({u}, lambda t: list_contains({tags_expr}, t))[1]"
    return (
        f"(CASE WHEN len({tags_expr}) = 0 THEN NULL "
        f"WHEN list_has_any({tags_expr}, {a}) THEN 'safety: blocked tag ' || {first_a} "
        f"WHEN {rating} IS DISTINCT FROM 'g' AND list_has_any({tags_expr}, {u}) "
        f"THEN 'safety: blocked tag ' || {first_u} || ' with rating ' || coalesce({rating}, 'missing') "
        "END)"
    )
