"""Captions of a batch that mixes Danbooru posts and caption-file posts, in row order.

Danbooru posts go through the vectorised builder (`caption_fast`); caption-file posts (their
`caption_tags` set: a kohya-style dataset, usually hundreds or thousands of images) are built
one by one by the reference rule (`captions.build_file_caption`: the file's tags as written).
The two results are put back in the input's row order, so the caller sees one
`CaptionArrays`. A batch without caption-file posts is the vectorised builder's alone.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tagtune.captions import fast as caption_fast
from tagtune.captions.fast import CaptionArrays
from tagtune.captions.rules import build_file_caption
from tagtune.captions.tokens import TokenCounter
from tagtune.recipe.model import CaptionConfig, SafetyConfig

_LIST = pa.list_(pa.string())


def _file_rows(table: pa.Table) -> np.ndarray:
    if "caption_tags" not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    valid = pc.is_valid(table.column("caption_tags"))
    return np.asarray(valid.to_numpy(zero_copy_only=False), dtype=bool)


def file_caption_arrays(
    table: pa.Table, cfg: CaptionConfig, counter: TokenCounter, safety: SafetyConfig | None
) -> CaptionArrays:
    """`CaptionArrays` of caption-file posts (every row has `caption_tags`)."""
    posts = table.select(
        [c for c in ("caption_tags", "keep_tokens") if c in table.column_names]
    ).to_pylist()
    parts = [build_file_caption(p, cfg, safety) for p in posts]
    tokens = np.array([counter.count_tags(p.tags) for p in parts], dtype=np.int64)
    n = len(parts)
    return CaptionArrays(
        tags=pa.array([p.tags for p in parts], _LIST),
        groups=pa.array([p.groups for p in parts], _LIST),
        caption=pa.array([p.text for p in parts], pa.string()),
        tokens=tokens,
        group_tokens={"general": int(tokens.sum())},
        field_counts={},
        missing={"score": n, "rating": n, "date": n},
        blocked={i: p.blocked for i, p in enumerate(parts) if p.blocked},
    )


def build_mixed_caption_arrays(
    table: pa.Table, cfg: CaptionConfig, counter: TokenCounter, safety: SafetyConfig | None = None
) -> CaptionArrays:
    """Captions of every row of `table` (Danbooru and caption-file posts), in row order."""
    is_file = _file_rows(table)
    if not is_file.any():
        return caption_fast.build_caption_arrays(table, cfg, counter, safety)
    meta_rows, file_rows = np.flatnonzero(~is_file), np.flatnonzero(is_file)
    files = file_caption_arrays(table.take(pa.array(file_rows)), cfg, counter, safety)
    if not len(meta_rows):
        return files
    meta = caption_fast.build_caption_arrays(table.take(pa.array(meta_rows)), cfg, counter, safety)
    order = np.concatenate([meta_rows, file_rows])
    back = pa.array(np.argsort(order, kind="stable"))
    groups = meta.groups.cast(_LIST)

    def both(a: pa.Array, b: pa.Array) -> pa.Array:
        return pa.concat_arrays([a, b]).take(back)

    group_tokens = dict(meta.group_tokens)
    for g, t in files.group_tokens.items():
        group_tokens[g] = group_tokens.get(g, 0) + t
    return CaptionArrays(
        tags=both(meta.tags, files.tags),
        groups=both(groups, files.groups),
        caption=both(meta.caption, files.caption),
        tokens=np.concatenate([meta.tokens, files.tokens])[np.argsort(order, kind="stable")],
        group_tokens=group_tokens,
        field_counts=meta.field_counts,
        missing={k: meta.missing.get(k, 0) + v for k, v in files.missing.items()},
        blocked={
            **{int(meta_rows[r]): why for r, why in meta.blocked.items()},
            **{int(file_rows[r]): why for r, why in files.blocked.items()},
        },
    )
