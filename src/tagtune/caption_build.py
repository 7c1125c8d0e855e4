"""`tagtune caption`: build every included post's caption into the catalog and captions.jsonl.

Posts are read from the catalog as Arrow columns, captions built with `caption_fast` (the same
rules as `captions.build_caption`, vectorised) and token counts added with the real CLIP
vocabulary (`tokens.TokenCounter`). Then the `captions` table is replaced in one transaction,
`WS/captions.jsonl` is written atomically and, on request, a kohya-style `NAME.txt` sidecar
beside each image.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagtune.atomic import atomic_path, write_text_atomic
from tagtune.captions import TAG_GROUPS, build_caption, explain_caption
from tagtune.catalog import SCHEMA, open_catalog, subset_where
from tagtune.errors import InputError, WorkspaceError
from tagtune.recipe import CaptionConfig
from tagtune.tokens import TokenCounter
from tagtune.workspace import Workspace

TOKEN_LIMITS = (75, 150, 225)
"""Caption lengths reported: training reads 75-token chunks, up to 225 tokens."""
HISTOGRAM_EDGES = tuple(range(0, 251, 25))
"""Token-length histogram bins [a, b); the last bin is open-ended."""

POST_COLUMNS = (
    "id, md5, favorite, score, rating, created_at, date, tags_artist, tags_copyright, "
    "tags_character, tags_general, tags_meta"
)

Progress = Callable[[str, int, int], None]
"""progress(step description, done, total): called as the work goes on."""


def source_query(cfg: CaptionConfig) -> str:
    """Included posts (not excluded): image file (or null), calendar date, tag lists in use."""
    tag_cols = "".join(f", posts.tags_{g}" for g in cfg.order if g in TAG_GROUPS)
    return f"""
SELECT posts.id, posts.md5, coalesce(posts.favorite, FALSE) AS favorite, files.path AS file,
       posts.score, posts.rating{tag_cols},
       coalesce(posts.date, TRY_CAST(nullif(regexp_extract(posts.created_at,
                '^\\s*(\\d{{4}}-\\d{{2}}-\\d{{2}})', 1), '') AS DATE)) AS pdate
FROM posts LEFT JOIN files ON files.post_id = posts.id
WHERE {subset_where("all")}
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


def _resolve(ws: Workspace, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ws.root / p


def sidecar_path(image: Path) -> Path:
    """The kohya caption sidecar of an image: `image.png` -> `image.txt`."""
    return image.with_suffix(".txt")


def write_sidecars(ws: Workspace, rows: list[tuple[str, str]], progress: Progress = _noop) -> int:
    """Write `caption` to the sidecar of each (image path, caption); unchanged files are kept.

    Returns how many sidecars exist afterwards. A missing image folder is an InputError.
    """
    done = 0
    for i, (image, caption) in enumerate(rows):
        target = sidecar_path(_resolve(ws, image))
        if not target.parent.is_dir():
            raise InputError("image folder is missing", file=target.parent, field="files.path")
        try:
            same = target.read_text(encoding="utf-8") == caption
        except (FileNotFoundError, UnicodeDecodeError):
            same = False
        if not same:
            write_text_atomic(target, caption)
        done += 1
        if i % 1000 == 0:
            progress("writing sidecars", i, len(rows))
    progress("writing sidecars", len(rows), len(rows))
    return done


def build_captions(
    ws: Workspace,
    *,
    sidecars: bool = False,
    cfg: CaptionConfig | None = None,
    counter: TokenCounter | None = None,
    progress: Progress = _noop,
) -> CaptionSummary:
    """Build the captions of every included post and write them (table, jsonl, sidecars).

    Excluded posts get no caption; posts without an image file are captioned (`file` null in
    captions.jsonl) and counted. Missing score/rating/date give no token and are counted.
    """
    import pyarrow as pa

    from tagtune.caption_fast import build_caption_arrays

    t0 = time.perf_counter()
    cfg = cfg or ws.recipe().caption
    if not ws.catalog_path.exists():
        raise WorkspaceError(
            "no catalog yet", file=ws.catalog_path, hint="run `tagtune ingest` first"
        )
    counter = counter or TokenCounter(cfg.separator)
    summary = CaptionSummary(tokenizer=counter.method, jsonl=str(ws.captions_path))
    with open_catalog(ws.catalog_path) as con:
        progress("reading posts", 0, 5)
        posts = _in_id_order(con.sql(source_query(cfg)).to_arrow_table())
        progress("building captions", 1, 5)
        res = build_caption_arrays(posts, cfg, counter)
        tokens = pa.array(res.tokens, pa.int32())
        progress("writing the captions table", 2, 5)
        _replace_captions_table(
            con,
            pa.table({"post_id": posts.column("id"), "caption": res.caption, "tags": res.tags,
                      "groups": res.groups, "tokens": tokens}),
        )  # fmt: skip
        progress("writing captions.jsonl", 3, 5)
        lines = pa.table(
            {
                "id": posts.column("id"),
                "md5": posts.column("md5"),
                "file": posts.column("file"),
                "caption": res.caption,
                "tokens": tokens,
                "favorite": posts.column("favorite"),
            }
        )
        write_jsonl(con, lines, ws.captions_path)
        summary.excluded = int(
            con.execute("SELECT count(*) FROM posts WHERE excluded IS NOT NULL").fetchone()[0]
        )
    progress("summary", 4, 5)
    _summarise(summary, cfg, posts, res)
    if sidecars:
        summary.sidecars = write_sidecars(ws, _image_captions(posts, res.caption), progress)
    progress("done", 5, 5)
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def _replace_captions_table(con, table) -> None:
    """Replace every row of `captions` with `table`, in one transaction (all or nothing)."""
    con.register("_new_captions", table)
    con.execute("SET preserve_insertion_order = false")  # lets DuckDB write in parallel
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute("DROP TABLE captions")  # much faster than deleting every row
        con.execute(SCHEMA)  # creates it again, empty
        con.execute(
            "INSERT INTO captions (post_id, caption, tags, groups, tokens) "
            "SELECT post_id, caption, tags, groups, tokens FROM _new_captions"
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.execute("RESET preserve_insertion_order")  # later writes (jsonl) keep row order
        con.unregister("_new_captions")


def _summarise(summary: CaptionSummary, cfg: CaptionConfig, posts, res) -> None:
    """Fill the summary's counts from the posts read and the captions built."""
    n = posts.num_rows
    summary.captions = n
    summary.with_file = n - posts.column("file").null_count
    summary.without_file = n - summary.with_file
    summary.empty = int((np.diff(res.tags.offsets.to_numpy()) == 0).sum())
    summary.missing = res.missing
    _token_stats(res.tokens, summary)
    summary.group_tokens = {
        g: {"tokens": t, "mean": round(t / n, 2) if n else 0.0} for g, t in res.group_tokens.items()
    }
    _field_summary(cfg, res.field_counts, summary)


def _image_captions(posts, caption) -> list[tuple[str, str]]:
    """(image path, caption) of every post that has an image file."""
    import pyarrow.compute as pc

    mask = pc.is_valid(posts.column("file")).combine_chunks()
    files = posts.column("file").filter(mask).to_pylist()
    return list(zip(files, caption.filter(mask).to_pylist(), strict=True))


def _in_id_order(table):
    """The table sorted by id (a scan usually is already: then nothing is copied)."""
    ids = table.column("id").to_numpy()
    if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()):
        return table
    return table.take(np.argsort(ids, kind="stable"))


def write_jsonl(con, table, path: Path) -> None:
    """Write an Arrow table as JSON lines (one object per row, columns in order), atomically."""
    con.register("_jsonl_rows", table)
    try:
        with atomic_path(path) as tmp:
            con.execute(f"COPY _jsonl_rows TO '{_sql_path(tmp)}' (FORMAT json)")
    finally:
        con.unregister("_jsonl_rows")


def _sql_path(path: Path) -> str:
    return os.fspath(path).replace("'", "''")


def show_caption(ws: Workspace, post_id: int, cfg: CaptionConfig | None = None) -> dict[str, Any]:
    """One post's caption broken down by group, with why each field token was chosen.

    Reads the post from the catalog and rebuilds its caption with the current recipe (nothing
    is written). An excluded post says why it has no caption; an unknown id is an InputError.
    """
    cfg = cfg or ws.recipe().caption
    with open_catalog(ws.catalog_path, read_only=True) as con:
        cur = con.execute(f"SELECT {POST_COLUMNS}, excluded FROM posts WHERE id = ?", [post_id])
        names = [d[0] for d in cur.description]
        row = cur.fetchone()
    if row is None:
        raise InputError(
            "no such post in the catalog", file=ws.catalog_path, field="id", value=post_id
        )
    post = dict(zip(names, row, strict=True))
    parts = build_caption(post, cfg)
    counter = TokenCounter(cfg.separator)
    included = post["excluded"] is None
    return {
        "id": post_id,
        "excluded": post["excluded"],
        "caption": parts.text if included else None,
        "tokens": counter.count_tags(parts.tags) if included else None,
        "tokenizer": counter.method,
        "groups": explain_caption(post, cfg),
    }
