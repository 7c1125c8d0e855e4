"""Danbooru post metadata -> training caption, as pure functions (the reference rules).

A caption is the post's tags in group order (`caption.order`: artist, copyright, character,
general, then quality, rating, period; "meta" only when listed), each group sorted by
Danbooru name (plain string order), the person-count tags first in the general group,
underscores turned into spaces except in short tags (kaomoji) and the keep list, every tag
once (first occurrence wins), joined with `caption.separator`.

This module is the reference: `caption_fast` builds the same captions with Arrow and NumPy
for speed, and a test checks both agree on random posts.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tagtune.ingest.safety import caption_blocked_reason
from tagtune.recipe.model import CaptionConfig, PeriodBand, QualityBand, SafetyConfig

TAG_GROUPS = ("artist", "copyright", "character", "general", "meta")
"""Groups whose tags come from the post's tag lists (`posts.tags_<group>`)."""

_DATE_PREFIX = re.compile(r"^\s*([0-9]{4})-([0-9]{2})-([0-9]{2})")


def calendar_date(created_at: str | None, utc_date: str | None = None) -> dt.date | None:
    """The calendar date as written in `created_at` (its own offset, never converted to UTC).

    Danbooru's own date of a post is the one written in created_at
    (`2025-09-15T19:27:31.639-04:00` -> 2025-09-15). When only a UTC date exists (gallery-dl's
    `date`), that date is used. None when neither holds a valid date.
    """
    for text in (created_at, utc_date):
        if not text:
            continue
        m = _DATE_PREFIX.match(text)
        if m:
            try:
                return dt.date(int(m[1]), int(m[2]), int(m[3]))
            except ValueError:
                continue
    return None


def quality_tag(score: float | None, bands: Sequence[QualityBand]) -> str | None:
    """The quality token for a score: bands are [min, previous min), highest first.

    A missing score gives None (no token).
    """
    if score is None:
        return None
    for band in bands:
        if band.min is None or score >= band.min:
            return band.tag
    return None


def rating_tags(rating: str | None, ratings: Mapping[str, Sequence[str]]) -> list[str]:
    """Caption tokens for a (modern) rating letter; missing or unknown ratings give none."""
    if rating is None:
        return []
    return list(ratings.get(rating, []))


def period_tag(date: dt.date | None, periods: Sequence[PeriodBand]) -> str | None:
    """The period token for a post date: bands are [start, previous start), newest first."""
    if date is None:
        return None
    for band in periods:
        if band.start is None or date >= band.start:
            return band.tag
    return None


def tag_text(tag: str, cfg: CaptionConfig) -> str:
    """A Danbooru tag name as written in a caption: underscores become spaces.

    Tags of at most `underscore_max_len` characters (kaomoji such as `^_^`, `0_0`) and tags in
    `keep_underscores` keep them. Parentheses are escaped only with `escape_parentheses`.
    """
    text = tag
    if len(tag) > cfg.underscore_max_len and tag not in cfg.keep_underscores:
        text = tag.replace("_", " ")
    return escape_parentheses(text) if cfg.escape_parentheses else text


def escape_parentheses(text: str) -> str:
    """Escape `(` and `)` A1111-style (`\\(`, `\\)`), so a prompt reads them as literal text."""
    return text.replace("(", "\\(").replace(")", "\\)")


def _clean(tags: Sequence[str | None] | None) -> list[str]:
    return [t for t in tags or () if t]


def order_group(group: str, tags: Sequence[str | None] | None, cfg: CaptionConfig) -> list[str]:
    """Danbooru names of one group in caption order: sorted; count tags first in `general`.

    Count tags keep Danbooru's alphabetical order among themselves (`1boy, 1girl, 2girls,
    multiple_girls`); tags such as `+_+`, `0_0` or `2koma` are not count tags and stay sorted
    among the rest.
    """
    names = sorted(_clean(tags))
    if group != "general":
        return names
    counts = set(cfg.count_tags)
    return [t for t in names if t in counts] + [t for t in names if t not in counts]


@dataclass(frozen=True)
class CaptionParts:
    """A built caption: its tags as written, the group of each, and the joined text.

    `blocked` is the safety filter's verdict on the caption itself (None: it may be used);
    a blocked caption is never written.
    """

    tags: list[str]
    groups: list[str]
    text: str
    blocked: str | None = None


def _group_tokens(group: str, post: Mapping[str, Any], cfg: CaptionConfig) -> list[str]:
    """Caption tokens of one group, before dedupe."""
    if group in TAG_GROUPS:
        return [tag_text(t, cfg) for t in order_group(group, post.get(f"tags_{group}"), cfg)]
    if group == "quality":
        raw = [quality_tag(post.get("score"), cfg.quality_bands)]
    elif group == "rating":
        raw = rating_tags(post.get("rating"), cfg.ratings)
    else:  # period
        raw = [period_tag(post_date(post), cfg.periods)]
    return [escape_parentheses(t) if cfg.escape_parentheses else t for t in raw if t]


def post_date(post: Mapping[str, Any]) -> dt.date | None:
    """The post's date: `date` (set at ingest), else the date written in `created_at`."""
    date = post.get("date")
    if isinstance(date, dt.datetime):
        return date.date()
    if isinstance(date, dt.date):
        return date
    return calendar_date(post.get("created_at"))


def build_caption(
    post: Mapping[str, Any], cfg: CaptionConfig, safety: SafetyConfig | None = None
) -> CaptionParts:
    """Build the caption of one post (a mapping with the `posts` table's columns).

    Missing fields give no token for their group; nothing here raises on absent data. The
    safety filter (house lists plus `safety`'s) judges the built caption again: `blocked`.
    """
    tags: list[str] = []
    groups: list[str] = []
    seen: set[str] = set()
    for group in cfg.order:
        for tok in _group_tokens(group, post, cfg):
            if tok not in seen:  # a tag never appears twice: first occurrence wins
                seen.add(tok)
                tags.append(tok)
                groups.append(group)
    rating = post["rating_raw"] if "rating_raw" in post else post.get("rating")
    blocked = caption_blocked_reason(tags, rating, safety, cfg.separator)
    return CaptionParts(tags, groups, cfg.separator.join(tags), blocked)


def explain_caption(post: Mapping[str, Any], cfg: CaptionConfig) -> list[dict[str, Any]]:
    """The caption of one post broken down by group, with why each field token was chosen.

    One entry per group in `caption.order`: `{"group", "tags", "why"}`; `tags` are the tokens
    the group contributes after dedupe.
    """
    parts = build_caption(post, cfg)
    rows = []
    for group in cfg.order:
        kept = [t for t, g in zip(parts.tags, parts.groups, strict=True) if g == group]
        rows.append({"group": group, "tags": kept, "why": _why(group, post, cfg)})
    return rows


def _why(group: str, post: Mapping[str, Any], cfg: CaptionConfig) -> str:
    if group in TAG_GROUPS:
        n = len(_clean(post.get(f"tags_{group}")))
        return f"{n} tag(s) from tags_{group}, sorted" + (
            ", count tags first" if group == "general" else ""
        )
    if group == "quality":
        score = post.get("score")
        if score is None:
            return "no score: no quality token"
        bands = cfg.quality_bands
        for i, band in enumerate(bands):
            if band.min is None or score >= band.min:
                low = f"{band.min:g}" if band.min is not None else "-inf"
                high = f"{bands[i - 1].min:g}" if i else "inf"
                return f"score {score} in [{low}, {high})"
    if group == "rating":
        rating = post.get("rating")
        if rating is None:
            return "no rating: no rating token"
        if rating not in cfg.ratings:
            return f"rating {rating!r} has no tokens (known: {', '.join(cfg.ratings)})"
        return f"rating {rating}"
    if group == "period":
        date = post_date(post)
        if date is None:
            return "no date: no period token"
        bands = cfg.periods
        for i, band in enumerate(bands):
            if band.start is None or date >= band.start:
                low = band.start.isoformat() if band.start else "-inf"
                high = bands[i - 1].start.isoformat() if i and bands[i - 1].start else "inf"
                return f"date {date.isoformat()} in [{low}, {high})"
    return ""
