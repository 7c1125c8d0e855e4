"""The caption rules of `tagtune.captions.rules`, vectorised over a million posts with Arrow and NumPy.

Per-post Python is too slow for the 100,000 posts/s target, so the rules are applied once
per *distinct* tag (display text via `captions.tag_text`, sort rank, count-tag flag) and the
per-post work becomes array operations:

1. every tag of every group becomes one int64 "slot" packing (row, group position, key)
   in that bit order, the key being the tag's rank in plain string order (count tags of the general group
   ranked before the rest); quality / rating / period tokens get keys after every tag's;
2. one sort of the slots puts every caption in order (a key maps back to its display text);
3. duplicates of a display text inside a row are dropped, first occurrence kept (only texts
   that can come from two sources are checked);
4. captions are joined with Arrow's `binary_join`; token counts come from per-display-text
   costs (`tokens.TokenCounter.tag_costs`) summed per row;
5. the safety filter judges each distinct display text once (`safety.caption_hit_positions`)
   and each caption by the smallest list position among its texts (`blocked`).

`captions.build_caption` stays the reference: a test checks both agree on random posts.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tagtune.captions.rules import TAG_GROUPS, escape_parentheses, tag_text
from tagtune.captions.tokens import TokenCounter
from tagtune.core.errors import InputError
from tagtune.ingest.safety import blocked_lists, caption_hit_positions, caption_reasons
from tagtune.recipe.model import CaptionConfig, SafetyConfig

_EPOCH = dt.date(1970, 1, 1)
FIELD_GROUPS = ("quality", "rating", "period")


@dataclass
class CaptionArrays:
    """Captions of many posts, in input row order, plus what the summary needs."""

    tags: pa.ListArray
    groups: pa.ListArray
    caption: pa.StringArray
    tokens: np.ndarray
    group_tokens: dict[str, int]
    field_counts: dict[str, dict[str, int]]
    missing: dict[str, int]
    blocked: dict[int, str] = field(default_factory=dict)
    """Row -> the safety filter's verdict on that caption (rows not listed may be used)."""


@dataclass
class _Keys:
    """The key space: key -> display id, and how many sources can produce each display id."""

    texts: dict[str, int] = field(default_factory=dict)
    key_did: list[np.ndarray] = field(default_factory=list)
    sources: list[np.ndarray] = field(default_factory=list)
    size: int = 0

    def did(self, text: str) -> int:
        return self.texts.setdefault(text, len(self.texts))

    def add(self, dids: np.ndarray) -> int:
        """Append keys for `dids`; returns the first new key."""
        first = self.size
        self.key_did.append(np.asarray(dids, dtype=np.int64))
        self.size += len(dids)
        return first


def _flat_group(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(row of each element, element values) of a list column, nulls and empty tags dropped."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(arr), dtype=np.int64), lengths)
    values = arr.flatten()
    keep = pc.and_(pc.is_valid(values), pc.not_equal(pc.fill_null(values, ""), ""))
    if not pc.all(keep).as_py():
        mask = keep.to_numpy(zero_copy_only=False)
        rows, values = rows[mask], values.filter(keep)
    return rows, values


def _band_choice(values: np.ndarray, valid: np.ndarray, starts: list[float]) -> np.ndarray:
    """Index of the band [start_i, start_{i-1}) holding each value; -1 where invalid.

    `starts` decrease; the band after the last start is the open-ended one.
    """
    asc = -np.asarray(starts, dtype=np.float64)
    choice = np.searchsorted(asc, -values.astype(np.float64), side="left")
    return np.where(valid, choice, -1)


def _field_choices(table: pa.Table, cfg: CaptionConfig):
    """Per field group: (choice per row or -1, token texts per choice); and missing counts."""
    n = table.num_rows
    score = table.column("score")
    s_valid = pc.is_valid(score).to_numpy(zero_copy_only=False)
    keys = list(cfg.ratings)
    r_choice = pc.fill_null(pc.index_in(table.column("rating"), value_set=pa.array(keys)), -1)
    r_choice = r_choice.to_numpy(zero_copy_only=False).astype(np.int64)
    days = pc.cast(table.column("pdate"), pa.int32())
    d_valid = pc.is_valid(days).to_numpy(zero_copy_only=False)
    missing = {
        "score": int(n - s_valid.sum()),
        "rating": int((r_choice < 0).sum()),
        "date": int(n - d_valid.sum()),
    }
    out = {}
    if "quality" in cfg.order:
        bands = cfg.quality_bands
        vals = pc.fill_null(score, 0).to_numpy(zero_copy_only=False)
        choice = _band_choice(vals, s_valid, [b.min for b in bands[:-1]])
        out["quality"] = (choice, [[b.tag] for b in bands])
    if "rating" in cfg.order:
        out["rating"] = (r_choice, [list(cfg.ratings[k]) for k in keys])
    if "period" in cfg.order:
        bands = cfg.periods
        vals = pc.fill_null(days, 0).to_numpy(zero_copy_only=False)
        choice = _band_choice(vals, d_valid, [(p.start - _EPOCH).days for p in bands[:-1]])
        out["period"] = (choice, [[p.tag] for p in bands])
    return out, missing


def _slots(table: pa.Table, cfg: CaptionConfig) -> tuple[np.ndarray, _Keys, dict[str, int]]:
    """Unsorted slots of every caption element, the key space, and missing-field counts."""
    n_groups = len(cfg.order)
    keys = _Keys()
    tag_groups = [(gpos, g) for gpos, g in enumerate(cfg.order) if g in TAG_GROUPS]
    flats = {g: _flat_group(table.column(f"tags_{g}")) for _, g in tag_groups}
    parts: list[tuple[int, np.ndarray, np.ndarray]] = []  # (gpos, rows, keys)
    if flats:
        uniq = pc.unique(pa.chunked_array([v for _, v in flats.values()], pa.string()))
        uniq = uniq.take(pc.sort_indices(uniq))  # UTF-8 byte order = code point order = str order
        names = uniq.to_pylist()
        d = len(names)
        tag_did = np.array([keys.did(tag_text(t, cfg)) for t in names], dtype=np.int64)
        counts = set(cfg.count_tags)
        first = keys.add(np.concatenate([tag_did, tag_did]))  # keys [0, d) and [d, 2d)
        rest = np.array([t not in counts for t in names], dtype=np.int64) * d
        for gpos, g in tag_groups:
            rows, values = flats[g]
            idx = pc.index_in(values, value_set=uniq).to_numpy(zero_copy_only=False)
            k = first + idx + rest[idx] if g == "general" else first + idx
            parts.append((gpos, rows, k))
            seen = np.zeros(d, dtype=bool)
            seen[idx] = True
            keys.sources.append(tag_did[seen])
    fields, missing = _field_choices(table, cfg)
    for gpos, g in enumerate(cfg.order):
        if g not in fields:
            continue
        choice, token_lists = fields[g]
        texts = [[escape_parentheses(t) if cfg.escape_parentheses else t for t in ts if t]
                 for ts in token_lists]  # fmt: skip
        for j in range(max((len(t) for t in texts), default=0)):
            dids = [keys.did(t[j]) if len(t) > j else -1 for t in texts]
            first = keys.add(np.array([x for x in dids if x >= 0], dtype=np.int64))
            key_of = np.cumsum([x >= 0 for x in dids]) - 1 + first
            table_j = np.array([*np.where(np.array(dids) >= 0, key_of, -1), -1], dtype=np.int64)
            k = table_j[choice]  # choice -1 picks the trailing -1
            rows = np.flatnonzero(k >= 0)
            parts.append((gpos, rows, k[rows]))
        # choices are exclusive: a text is one source per group, unless a choice repeats it
        group_dids = sorted({keys.did(x) for t in texts for x in t})
        for t in texts:
            ids = [keys.did(x) for x in t]
            group_dids += [i for i, c in Counter(ids).items() for _ in range(c - 1)]
        keys.sources.append(np.array(group_dids, dtype=np.int64))
    kbits, gbits = _bits(keys.size), _bits(n_groups)
    if _bits(table.num_rows) + gbits + kbits > 62:
        raise InputError(
            "too many posts and distinct tags to caption in one batch",
            field="posts",
            value=table.num_rows,
        )
    slots = np.empty(sum(len(k) for _, _, k in parts), dtype=np.int64)
    at = 0
    for gpos, rows, k in parts:  # packed in place: no temporaries of the full size
        out = slots[at : at + len(k)]
        np.left_shift(rows, gbits + kbits, out=out)
        out |= k
        out |= gpos << kbits
        at += len(k)
    return slots, keys, missing


def _bits(count: int) -> int:
    """Bits needed to store 0..count-1."""
    return max(int(count - 1).bit_length(), 1)


def _keep_first(rows: np.ndarray, dids: np.ndarray, multi: np.ndarray) -> np.ndarray:
    """Mask of elements (in caption order) to keep: a text repeated in a row keeps its first.

    Only elements whose display id can come from two sources (`multi`) are checked.
    """
    keep = np.ones(len(rows), dtype=bool)
    sel = np.flatnonzero(multi[dids])
    if not len(sel):
        return keep
    pair = rows[sel] * len(multi) + dids[sel]
    order = np.argsort(pair, kind="stable")  # equal pairs keep caption order
    sp = pair[order]
    later = np.zeros(len(sel), dtype=bool)
    later[1:] = sp[1:] == sp[:-1]
    keep[sel[order[later]]] = False
    return keep


def build_caption_arrays(
    table: pa.Table, cfg: CaptionConfig, counter: TokenCounter, safety: SafetyConfig | None = None
) -> CaptionArrays:
    """Captions (tags, groups, text, token count) of every row of `table`, and the safety
    filter's verdict on each (`blocked`; house lists plus `safety`'s).

    `table` has the posts columns score, rating, tags_<group> for the tag groups in
    `cfg.order`, and `pdate` (the calendar date); `rating_raw` when present is the rating
    the filter reads (else `rating`). Results follow the input row order.
    """
    n, n_groups = table.num_rows, len(cfg.order)
    slots, keys, missing = _slots(table, cfg)
    slots.sort()
    if len(slots) > 1:  # the same tag twice in one list of one post
        twin = np.flatnonzero(slots[1:] == slots[:-1]) + 1
        if len(twin):
            slots = np.delete(slots, twin)
    kbits, gbits = _bits(keys.size), _bits(n_groups)
    key = slots & ((1 << kbits) - 1)
    rest = slots >> kbits
    gpos, rows = rest & ((1 << gbits) - 1), rest >> gbits
    key_did = np.concatenate(keys.key_did) if keys.key_did else np.zeros(0, dtype=np.int64)
    dids = key_did[key]
    n_texts = len(keys.texts)
    sources = np.concatenate(keys.sources) if keys.sources else np.zeros(0, dtype=np.int64)
    multi = np.bincount(sources, minlength=n_texts) > 1
    keep = _keep_first(rows, dids, multi)
    if not keep.all():
        rows, gpos, dids = rows[keep], gpos[keep], dids[keep]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    texts = list(keys.texts)
    pa_offsets = pa.array(offsets, pa.int32())
    tags = pa.ListArray.from_arrays(pa_offsets, pa.array(texts, pa.string()).take(dids))
    group_codes = pa.DictionaryArray.from_arrays(
        pa.array(gpos.astype(np.int8)), pa.array(list(cfg.order), pa.string())
    )
    groups = pa.ListArray.from_arrays(pa_offsets, group_codes)
    caption = pc.binary_join(tags, cfg.separator)
    tokens, per_elem = _token_counts(counter, texts, dids, offsets, tags)
    sums = np.bincount(gpos, weights=per_elem, minlength=n_groups)
    field_counts = {}
    for gi, g in enumerate(cfg.order):
        if g in FIELD_GROUPS:
            c = np.bincount(dids[gpos == gi], minlength=n_texts)
            field_counts[g] = {texts[i]: int(c[i]) for i in np.flatnonzero(c)}
    return CaptionArrays(
        tags,
        groups,
        caption,
        tokens,
        {g: int(s) for g, s in zip(cfg.order, sums, strict=True)},
        field_counts,
        missing,
        _blocked(table, texts, rows, dids, cfg.separator, safety),
    )


def _blocked(table: pa.Table, texts: list[str], rows: np.ndarray, dids: np.ndarray,
             separator: str, safety: SafetyConfig | None) -> dict[int, str]:  # fmt: skip
    """Row -> verdict for the captions that show a listed tag (usually none)."""
    always, unless_general = (len(x) for x in blocked_lists(safety))
    a_text, u_text = caption_hit_positions(texts, safety, separator)
    n = table.num_rows
    row_a = np.full(n, always, dtype=np.int64)
    row_u = np.full(n, unless_general, dtype=np.int64)
    for text_pos, row_pos, none in ((a_text, row_a, always), (u_text, row_u, unless_general)):
        elem = text_pos[dids]
        sel = np.flatnonzero(elem < none)
        np.minimum.at(row_pos, rows[sel], elem[sel])
    flagged = np.flatnonzero((row_a < always) | (row_u < unless_general))
    if not len(flagged):
        return {}
    col = "rating_raw" if "rating_raw" in table.column_names else "rating"
    ratings = table.column(col).take(pa.array(flagged)).to_pylist()
    reasons = caption_reasons(row_a[flagged], row_u[flagged], ratings, safety)
    return {int(r): why for r, why in zip(flagged, reasons, strict=True) if why}


def _token_counts(
    counter: TokenCounter,
    texts: list[str],
    dids: np.ndarray,
    offsets: np.ndarray,
    tags: pa.ListArray,
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens per caption, tokens per element incl. its separator) from per-text costs."""
    if not counter.by_tag:
        return counter.count_lists(tags.flatten(), offsets)
    mid, last = counter.tag_costs(texts)
    per_elem = mid.take(dids)  # int32: a tag costs a few tokens
    lengths = np.diff(offsets)
    ends = offsets[1:][lengths > 0] - 1
    per_elem[ends] = last.take(dids[ends])
    csum = np.zeros(len(per_elem) + 1, dtype=np.int64)
    np.cumsum(per_elem, dtype=np.int64, out=csum[1:])
    return csum[offsets[1:]] - csum[offsets[:-1]], per_elem
