"""The minor-safety filter (docs/design.md, "Responsible use"): always on, never shrinkable.

A post whose tags mark an apparent minor never enters training. The filter reads tags (not
md5 or files: restricted posts often lack md5). Some tags are blocked at any rating; others
are blocked unless the rating is g. The recipe may only ADD tags to either list.

Tags are compared in one normal form (`tag_normalize.filter_key`): NFKC, no hidden
characters, case-insensitive, without combining marks, underscores single and trimmed, so no
spelling (full-width, `Lòli`, `lo<ZWSP>li`, `_loli_`) walks around a listed tag.

The same rule exists twice: `blocked_reason` for one post in Python, and `blocked_sql` for a
whole dump inside DuckDB (a million posts cannot go through Python one by one). Tests check
that both give the same answer on the same table of cases.

The filter is judged again on each built caption (`caption_blocked_reason`, and
`caption_hit_positions` for the vectorised builder): what the text encoder reads must not hold
a listed tag either, whatever the recipe's caption tokens or separator made of the tags.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from tagtune.ingest.tag_normalize import filter_key, filter_key_sql, split_tags
from tagtune.recipe.model import SafetyConfig

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


CAPTION_VERDICT = "safety: caption has blocked tag "
"""How a verdict on a built caption starts (`posts.excluded`); the tag verdicts say
`safety: blocked tag ...`."""


def _extend(base: Iterable[str], extra: Iterable[str]) -> tuple[str, ...]:
    out = list(base)
    for tag in extra:
        t = filter_key(tag)
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
    tags: Iterable[str | None],
    rating_raw: str | None,
    recipe_safety: SafetyConfig | None = None,
    legacy: bool = False,
) -> str | None:
    """Why a post must never enter training, or None when it may.

    `tags` are the post's Danbooru tags of every category, as read or as stored (an element
    with whitespace in it is several tags, as at ingest); each is compared in its
    `filter_key` form. `legacy` is accepted for clarity but changes nothing: the filter
    always reads the raw rating letter (see safety_rating).
    """
    del legacy  # an old `s` counts as s for this filter, exactly like a modern one
    listed = set().union(*blocked_lists(recipe_safety))
    keys = {filter_key(t) for tag in tags if tag for t in split_tags(tag, listed)[0]}
    return _verdict(keys, rating_raw, recipe_safety, "safety: blocked tag ")


def _verdict(
    keys: set[str], rating_raw: str | None, recipe_safety: SafetyConfig | None, prefix: str
) -> str | None:
    always, unless_general = blocked_lists(recipe_safety)
    for tag in always:
        if tag in keys:
            return prefix + tag
    rating = safety_rating(rating_raw)
    if rating == "g":
        return None
    for tag in unless_general:
        if tag in keys:
            return f"{prefix}{tag} with rating {rating or 'missing'}"
    return None


_ESCAPED = re.compile(r"\\([()])")


def caption_keys(text: str, separator: str = ", ") -> list[str]:
    """The `filter_key`s a caption tag shows the text encoder: the tag in caption spelling
    (spaces for underscores, `\\(` for `(`), split again at commas and at the separator, so
    a token such as `"x, loli"` is read as the two tags it shows."""
    pieces = [_ESCAPED.sub(r"\1", text) if "\\" in text else text]
    for sep in {",", separator.strip()} - {""}:
        pieces = [p for piece in pieces for p in piece.split(sep)]
    return [k for k in (filter_key(p) for p in pieces) if k]


def caption_blocked_reason(
    caption_tags: Sequence[str],
    rating_raw: str | None,
    recipe_safety: SafetyConfig | None = None,
    separator: str = ", ",
) -> str | None:
    """The filter judged again on a built caption's tags (the reference rule).

    Returns `CAPTION_VERDICT` + the listed tag found (with the rating for the conditional
    list), or None. `rating_raw` is the post's rating as read, as for `blocked_reason`.
    """
    keys = {k for t in caption_tags for k in caption_keys(t, separator)}
    return _verdict(keys, rating_raw, recipe_safety, CAPTION_VERDICT)


def caption_hit_positions(
    texts: Sequence[str], recipe_safety: SafetyConfig | None = None, separator: str = ", "
) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct caption text: the list position of the first-listed tag it shows, in the
    always-blocked and in the blocked-unless-general list (the list's length where none).

    The vectorised builder takes the smallest position over a caption's texts, which is the
    tag `caption_blocked_reason` names. Printable-ASCII texts are judged with Arrow (the same
    steps as `caption_keys`, which a test checks); the others one by one.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    lists = blocked_lists(recipe_safety)
    out = [np.full(len(texts), len(x), dtype=np.int64) for x in lists]
    arr = pa.array(texts, pa.string())
    ascii_rows = np.asarray(pc.fill_null(pc.string_is_ascii(arr), True), dtype=bool)
    for i in np.flatnonzero(~ascii_rows):
        for key in caption_keys(texts[i], separator):
            for pos, listed in zip(out, lists, strict=True):
                if key in listed:
                    pos[i] = min(pos[i], listed.index(key))
    rows = np.flatnonzero(ascii_rows)
    pieces = pc.replace_substring_regex(arr.take(pa.array(rows)), r"\\([()])", r"\1")
    parent = rows
    for sep in sorted({",", separator.strip()} - {""}):
        split = pc.split_pattern(pieces, sep)
        parent = parent[np.asarray(pc.list_parent_indices(split))]
        pieces = pc.list_flatten(split)
    keys = pc.replace_substring_regex(pc.utf8_lower(pieces), "[ _]+", "_")
    keys = pc.utf8_trim(keys, "_")
    for pos, listed in zip(out, lists, strict=True):
        at = pc.index_in(keys, value_set=pa.array(listed, pa.string()))
        hit = np.flatnonzero(np.asarray(pc.is_valid(at)))
        np.minimum.at(pos, parent[hit], np.asarray(at.take(pa.array(hit)), dtype=np.int64))
    return out[0], out[1]


def caption_reasons(
    a_pos: np.ndarray, u_pos: np.ndarray, ratings_raw: Sequence[str | None],
    recipe_safety: SafetyConfig | None = None,
) -> list[str | None]:  # fmt: skip
    """Caption verdicts from per-caption smallest positions (see caption_hit_positions)."""
    always, unless_general = blocked_lists(recipe_safety)
    out: list[str | None] = [None] * len(a_pos)
    for i in np.flatnonzero((a_pos < len(always)) | (u_pos < len(unless_general))):
        if a_pos[i] < len(always):
            out[i] = CAPTION_VERDICT + always[a_pos[i]]
            continue
        rating = safety_rating(ratings_raw[i])
        if rating != "g":
            out[i] = (
                f"{CAPTION_VERDICT}{unless_general[u_pos[i]]} with rating {rating or 'missing'}"
            )
    return out


def _sql_list(tags: Iterable[str]) -> str:
    return "[" + ", ".join("'" + t.replace("'", "''") + "'" for t in tags) + "]::VARCHAR[]"


def safety_rating_sql(rating_expr: str) -> str:
    """SQL twin of safety_rating over a VARCHAR expression."""
    words = " ".join(f"WHEN '{w}' THEN '{c}'" for w, c in _RATING_WORDS.items())
    r = f"nullif(lower(trim({rating_expr})), '')"
    return f"(CASE {r} {words} ELSE {r} END)"


def blocked_hits_sql(
    list_exprs: Iterable[str], recipe_safety: SafetyConfig | None = None, plain: bool = False
) -> str:
    """SQL VARCHAR[]: the `filter_key`s of the listed tags in these tag-list expressions.

    The lists hold tags as `tag_normalize.split_tags` leaves them (the catalog's). A cheap
    first pass (one IN test per tag); only a tag with non-ASCII letters or odd underscores
    is folded in full (`filter_key_sql`). `plain`: the caller knows every tag is printable
    ASCII without leading, trailing or double underscores, so lower case is the key.
    blocked_sql then only looks at these few keys.
    """
    always, unless_general = blocked_lists(recipe_safety)
    in_list = ", ".join("'" + t.replace("'", "''") + "'" for t in (*always, *unless_general))
    odd = "strlen(x) <> length(x) OR contains(x, '__') OR starts_with(x, '_') OR ends_with(x, '_')"
    listed = (
        f"lower(x) IN ({in_list})"
        if plain
        else f"CASE WHEN lower(x) IN ({in_list}) THEN TRUE "
        f"WHEN {odd} THEN {filter_key_sql('x')} IN ({in_list}) ELSE FALSE END"
    )
    parts = [f"list_filter(coalesce({e}, []::VARCHAR[]), lambda x: {listed})" for e in list_exprs]
    hits = parts[0] if len(parts) == 1 else f"list_concat({', '.join(parts)})"
    key = "lower(x)" if plain else filter_key_sql("x")
    return f"list_transform({hits}, lambda x: {key})"


def blocked_sql(tags_expr: str, rating_expr: str, recipe_safety: SafetyConfig | None = None) -> str:
    """SQL twin of blocked_reason: a VARCHAR expression, NULL when the post may be used.

    `tags_expr` is a VARCHAR[] of the post's tag keys (the output of blocked_hits_sql);
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
