"""`tagtune caption`: build every included post's caption into the catalog and captions.jsonl.

Posts are read from the catalog as Arrow columns, captions built with `caption_fast` (the same
rules as `captions.build_caption`, vectorised) and token counts added with the real CLIP
vocabulary (`tokens.TokenCounter`). The safety filter judges every built caption again: a
post whose caption shows a listed tag is excluded (`posts.excluded` starts with
`safety.CAPTION_VERDICT`) and never written. Then the `captions` table is replaced in one
transaction, `WS/captions.jsonl` is written atomically and, on request, a kohya-style
`NAME.txt` sidecar beside each image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagtune.captions.rules import TAG_GROUPS, build_caption, explain_caption
from tagtune.captions.sidecars import sync_sidecars
from tagtune.captions.tokens import TokenCounter
from tagtune.captions.write import ChunkWriter, chunk_tables, concat_chunks, write_jsonl
from tagtune.core.atomic import atomic_path
from tagtune.core.catalog import open_catalog
from tagtune.core.errors import InputError, WorkspaceError
from tagtune.core.stale_temps import clean_stale_temps
from tagtune.core.workspace import Workspace
from tagtune.ingest.safety import CAPTION_VERDICT
from tagtune.ingest.verdicts import sync_with_recipe
from tagtune.recipe.model import CaptionConfig, SafetyConfig
from tagtune.recipe.workspace import workspace_recipe

TOKEN_LIMITS = (75, 150, 225)
"""Caption lengths reported: training reads 75-token chunks, up to 225 tokens."""
CHUNK_ROWS = 100_000
"""Posts built per chunk: inserting one chunk overlaps building the next."""
HISTOGRAM_EDGES = tuple(range(0, 251, 25))
"""Token-length histogram bins [a, b); the last bin is open-ended."""

POST_COLUMNS = (
    "id, md5, favorite, score, rating, created_at, date, tags_artist, tags_copyright, "
    "tags_character, tags_general, tags_meta"
)

Progress = Callable[[str, int, int], None]
"""progress(step description, done, total): called as the work goes on."""


def source_query(cfg: CaptionConfig) -> str:
    """Posts not excluded by their tags (a verdict on an earlier caption is judged again):
    image file (or null), calendar date, tag lists in use, the rating as read."""
    tag_cols = "".join(f", posts.tags_{g}" for g in cfg.order if g in TAG_GROUPS)
    return f"""
SELECT posts.id, posts.md5, coalesce(posts.favorite, FALSE) AS favorite, files.path AS file,
       posts.score, posts.rating, posts.rating_raw{tag_cols},
       coalesce(posts.date, TRY_CAST(nullif(regexp_extract(posts.created_at,
                '^\\s*(\\d{{4}}-\\d{{2}}-\\d{{2}})', 1), '') AS DATE)) AS pdate
FROM posts LEFT JOIN files ON files.post_id = posts.id
WHERE posts.excluded IS NULL OR starts_with(posts.excluded, '{CAPTION_VERDICT}')
"""


@dataclass
class CaptionSummary:
    """What `tagtune caption` did, for the one-screen summary and `--json`.

    `missing` counts posts without a score, without a known rating letter, without a date;
    `over` counts captions longer than 75, 150 and 225 CLIP tokens; `group_tokens` gives the
    tokens each field group adds (its separators included), in total and per caption.
    """

    captions: int = 0
    with_file: int = 0
    without_file: int = 0
    excluded: int = 0
    empty: int = 0
    tokenizer: str = ""
    tokens_mean: float = 0.0
    tokens_max: int = 0
    over: dict[str, int] = field(default_factory=dict)
    histogram: list[dict[str, Any]] = field(default_factory=list)
    group_tokens: dict[str, dict[str, float]] = field(default_factory=dict)
    quality: dict[str, int] = field(default_factory=dict)
    rating: dict[str, int] = field(default_factory=dict)
    period: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    sidecars: int = 0
    sidecars_removed: int = 0
    sidecars_kept: int = 0
    sidecars_dir: str | None = None
    jsonl: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-ready dict (the `--json` object)."""
        return asdict(self)


def _noop(_step: str, _done: int, _total: int) -> None:
    return None


def _token_stats(tokens: np.ndarray, summary: CaptionSummary) -> None:
    n = len(tokens)
    summary.tokens_mean = round(float(tokens.mean()), 2) if n else 0.0
    summary.tokens_max = int(tokens.max()) if n else 0
    summary.over = {str(k): int((tokens > k).sum()) for k in TOKEN_LIMITS}
    edges = [*HISTOGRAM_EDGES, None]
    summary.histogram = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = tokens >= lo if hi is None else (tokens >= lo) & (tokens < hi)
        summary.histogram.append({"from": lo, "to": hi, "count": int(mask.sum())})


def _field_summary(cfg: CaptionConfig, counts: dict[str, dict[str, int]], s: CaptionSummary):
    """Counts per quality / rating / period token, in the recipe's band order (zeros kept)."""
    names = {
        "quality": [b.tag for b in cfg.quality_bands],
        "rating": [t for v in cfg.ratings.values() for t in v],
        "period": [p.tag for p in cfg.periods],
    }
    for group, tags in names.items():
        got = counts.get(group, {})
        plain = {t.replace("\\(", "(").replace("\\)", ")"): c for t, c in got.items()}
        setattr(
            s,
            group,
            {t: plain.get(t, 0) for t in dict.fromkeys(tags) if t} if group in cfg.order else {},
        )


def build_captions(
    ws: Workspace,
    *,
    sidecars: bool = False,
    sidecars_dir: str | Path | None = None,
    overwrite: bool = False,
    cfg: CaptionConfig | None = None,
    counter: TokenCounter | None = None,
    progress: Progress = _noop,
) -> CaptionSummary:
    """Build the captions of every included post and write them (table, jsonl, sidecars).

    Excluded posts get no caption; posts without an image file are captioned (`file` null in
    captions.jsonl) and counted. Missing score/rating/date give no token and are counted.
    Sidecars (`sidecars`, or `sidecars_dir` to write them into that folder) never replace a
    file tagtune did not write unless `overwrite` (see `caption_sidecars`).
    """
    import pyarrow as pa

    t0 = time.perf_counter()
    sidecars = sidecars or sidecars_dir is not None
    if overwrite and not sidecars:
        raise InputError("only applies to sidecars", field="--overwrite", hint="add --sidecars")
    if sidecars_dir is not None and Path(sidecars_dir).exists() and not Path(sidecars_dir).is_dir():
        raise InputError("is not a folder", file=sidecars_dir, field="--sidecars-dir")
    clean_stale_temps(ws.captions_path)
    recipe = workspace_recipe(ws)
    cfg = cfg or recipe.caption
    if not ws.catalog_path.exists():
        raise WorkspaceError(
            "no catalog yet", file=ws.catalog_path, hint="run `tagtune ingest` first"
        )
    counter = counter or TokenCounter(cfg.separator)
    summary = CaptionSummary(tokenizer=counter.method, jsonl=str(ws.captions_path))
    with open_catalog(ws.catalog_path) as con:
        sync_with_recipe(con, recipe)  # safety lists or legacy_ratings changed since ingest
        progress("reading posts", 0, 3)
        posts = _in_id_order(con.sql(source_query(cfg)).to_arrow_table())
        progress("building and writing captions", 1, 3)
        parts, blocked = _build_and_write(
            con, posts, cfg, counter, ws.captions_path, progress, recipe.safety
        )
        posts = mark_caption_verdicts(con, posts, blocked)
        summary.excluded = int(
            con.execute("SELECT count(*) FROM posts WHERE excluded IS NOT NULL").fetchall()[0][0]
        )
        if sidecars:
            caption = pa.chunked_array([r.caption for r in parts], pa.string())
            side = sync_sidecars(con, ws, _image_captions(posts, caption), folder=sidecars_dir,
                                 overwrite=overwrite, progress=progress)  # fmt: skip
            summary.sidecars, summary.sidecars_removed = side.sidecars, side.removed
            summary.sidecars_kept = side.kept
            summary.sidecars_dir = str(sidecars_dir) if sidecars_dir is not None else None
    progress("summary", 2, 3)
    _summarise(summary, cfg, posts, parts)
    progress("done", 3, 3)
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def mark_caption_verdicts(con, posts, blocked: dict[int, str]):
    """Record the safety filter's verdicts on the built captions in `posts.excluded` (one
    transaction; earlier caption verdicts are replaced) and return `posts` without them.

    Their file rows stay, so a recipe change that clears the verdict needs no new ingest.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    verdicts = pa.table({"id": pa.array(list(blocked), pa.int64()),
                         "reason": pa.array(list(blocked.values()), pa.string())})  # fmt: skip
    con.register("_caption_verdicts", verdicts)
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(
            "UPDATE posts SET excluded = NULL WHERE starts_with(excluded, ?)", [CAPTION_VERDICT]
        ).fetchall()
        con.execute(
            "UPDATE posts SET excluded = v.reason FROM _caption_verdicts v WHERE posts.id = v.id"
        ).fetchall()
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("_caption_verdicts")
    if not blocked:
        return posts
    return posts.filter(pc.invert(pc.is_in(posts.column("id"), value_set=verdicts.column("id"))))


def _build_and_write(con, posts, cfg: CaptionConfig, counter: TokenCounter, jsonl: Path,
                     progress: Progress, safety: SafetyConfig | None = None
                     ) -> tuple[list, dict[int, str]]:  # fmt: skip
    """Build captions chunk by chunk while a writer thread inserts the chunks built so far.

    The writer replaces the `captions` table in one transaction (one INSERT reading the
    chunks as they come); captions.jsonl is written (atomically) here, once every chunk is
    built, while the insert finishes. DuckDB releases the GIL, so the insert overlaps the
    building. A post whose caption the safety filter blocks is left out (and rebuilt
    without: the summary counts only what is written). Returns the `CaptionArrays` of every
    chunk, in row order, and post id -> verdict of the posts left out.
    """
    from tagtune.captions.fast import build_caption_arrays

    n = posts.num_rows
    starts = list(range(0, n, CHUNK_ROWS)) or [0]
    parts = []
    blocked: dict[int, str] = {}
    with atomic_path(jsonl) as tmp:
        writer = ChunkWriter(con)
        writer.start()
        built = False
        try:
            lines = []
            for i, start in enumerate(starts):
                chunk = posts.slice(start, CHUNK_ROWS)
                res = build_caption_arrays(chunk, cfg, counter, safety)
                if res.blocked:
                    chunk, res = _without_blocked(chunk, res, blocked, cfg, counter, safety)
                parts.append(res)
                rows, chunk_lines = chunk_tables(chunk, res)
                writer.put(rows)
                lines.append(chunk_lines)
                progress("building and writing captions", 1 + i, 1 + len(starts))
                if writer.error is not None:
                    break
            else:  # while the writer still inserts (ORDER BY: its settings do not matter)
                with con.cursor() as cur:
                    write_jsonl(cur, concat_chunks(lines), tmp, atomic=False, order_by="id")
            built = True
        finally:
            writer.finish(built)
        if writer.error is not None:
            raise writer.error
    return parts, blocked


def _without_blocked(chunk, res, blocked: dict[int, str], cfg: CaptionConfig,
                     counter: TokenCounter, safety: SafetyConfig | None):  # fmt: skip
    """The chunk without its blocked rows (their ids and verdicts added to `blocked`), and
    its captions built again."""
    import pyarrow as pa

    from tagtune.captions.fast import build_caption_arrays

    ids = chunk.column("id").to_pylist()
    blocked.update({ids[row]: why for row, why in res.blocked.items()})
    keep = np.ones(chunk.num_rows, dtype=bool)
    keep[list(res.blocked)] = False
    chunk = chunk.filter(pa.array(keep))
    return chunk, build_caption_arrays(chunk, cfg, counter, safety)


def _summarise(summary: CaptionSummary, cfg: CaptionConfig, posts, parts: list) -> None:
    """Fill the summary's counts from the posts read and the captions built (in chunks)."""
    n = posts.num_rows
    summary.captions = n
    summary.with_file = n - posts.column("file").null_count
    summary.without_file = n - summary.with_file
    summary.empty = sum(int((np.diff(r.tags.offsets.to_numpy()) == 0).sum()) for r in parts)
    summary.missing = _add_up(r.missing for r in parts)
    _token_stats(np.concatenate([r.tokens for r in parts]), summary)
    group_tokens = _add_up(r.group_tokens for r in parts)
    summary.group_tokens = {
        g: {"tokens": t, "mean": round(t / n, 2) if n else 0.0} for g, t in group_tokens.items()
    }
    field_counts = {
        g: _add_up(r.field_counts.get(g, {}) for r in parts)
        for g in dict.fromkeys(g for r in parts for g in r.field_counts)
    }
    _field_summary(cfg, field_counts, summary)


def _add_up(counts) -> dict:
    """Key-wise sum of dicts of numbers (first-seen key order)."""
    total: dict = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


def _image_captions(posts, caption) -> list[tuple[int, str, str]]:
    """(post id, image path, caption) of every post that has an image file."""
    import pyarrow.compute as pc

    mask = pc.is_valid(posts.column("file")).combine_chunks()
    ids = posts.column("id").filter(mask).to_pylist()
    files = posts.column("file").filter(mask).to_pylist()
    return list(zip(ids, files, caption.filter(mask).to_pylist(), strict=True))


def _in_id_order(table):
    """The table sorted by id, copying as little as possible.

    A scan is usually in order or made of a few sorted runs (a parallel ingest): then the
    result is slices of the table put in order (no copy). Scattered rows are gathered.
    """
    import pyarrow as pa

    ids = table.column("id").to_numpy()
    if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()):
        return table
    order = np.argsort(ids, kind="stable")
    cuts = np.flatnonzero(np.diff(order) != 1) + 1  # where the next row is not the next slice row
    if len(cuts) > max(64, len(ids) // 10_000):
        return table.take(order)
    starts = [0, *cuts.tolist()]
    ends = [*cuts.tolist(), len(order)]
    return pa.concat_tables(
        [table.slice(int(order[a]), b - a) for a, b in zip(starts, ends, strict=True)]
    )


def show_caption(ws: Workspace, post_id: int, cfg: CaptionConfig | None = None) -> dict[str, Any]:
    """One post's caption broken down by group, with why each field token was chosen.

    Reads the post from the catalog and rebuilds its caption with the current recipe (nothing
    is written). An excluded post (by its tags, or its caption blocked by the safety filter
    now) says why it has no caption; an unknown id is an InputError.
    """
    recipe = workspace_recipe(ws)
    cfg = cfg or recipe.caption
    with open_catalog(ws.catalog_path, read_only=True) as con:
        cur = con.execute(
            f"SELECT {POST_COLUMNS}, rating_raw, excluded FROM posts WHERE id = ?", [post_id]
        )
        names = [d[0] for d in cur.description]
        row = cur.fetchone()
    if row is None:
        raise InputError(
            "no such post in the catalog", file=ws.catalog_path, field="id", value=post_id
        )
    post = dict(zip(names, row, strict=True))
    parts = build_caption(post, cfg, recipe.safety)
    counter = TokenCounter(cfg.separator)
    excluded = post["excluded"]
    if excluded is None or excluded.startswith(CAPTION_VERDICT):  # judged again now
        excluded = parts.blocked
    included = excluded is None
    return {
        "id": post_id,
        "excluded": excluded,
        "caption": parts.text if included else None,
        "tokens": counter.count_tags(parts.tags) if included else None,
        "tokenizer": counter.method,
        "groups": explain_caption(post, cfg) if included else [],  # never show its tags
    }
