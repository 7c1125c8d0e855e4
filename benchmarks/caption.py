"""Benchmark `tagtune caption`: captions + CLIP token counts + captions table + captions.jsonl.

The catalog is built from the synthetic JSONL dump (`tagtune.synthetic.collection.write_jsonl_dump`,
1,000,000 posts by default) with `tagtune ingest` (or, where that is missing, plain DuckDB
SQL), plus one `files` row per post so every caption has a file path in captions.jsonl.
The dump and catalog are kept in bench-out/ between runs.

    .venv/bin/python benchmarks/caption.py [--n 1000000] [--out bench-out]

Target (issue 3): at least 100,000 posts/s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

LOAD = """
INSERT INTO posts (id, md5, created_at, date, score, fav_count, rating, rating_raw, file_ext,
                   image_width, image_height, tags_artist, tags_copyright, tags_character,
                   tags_general, tags_meta, parent_id, is_deleted, source, favorite)
SELECT id, md5, created_at, CAST(substr(created_at, 1, 10) AS DATE), score, fav_count,
       rating, rating, file_ext, image_width, image_height,
       list_filter(string_split(tag_string_artist, ' '), lambda t: t <> ''),
       list_filter(string_split(tag_string_copyright, ' '), lambda t: t <> ''),
       list_filter(string_split(tag_string_character, ' '), lambda t: t <> ''),
       list_filter(string_split(tag_string_general, ' '), lambda t: t <> ''),
       list_filter(string_split(tag_string_meta, ' '), lambda t: t <> ''),
       parent_id, is_deleted, 'bench', fav_count >= 30
FROM read_json('{dump}', format = 'newline_delimited', columns = {{
    id: 'BIGINT', md5: 'VARCHAR', created_at: 'VARCHAR', score: 'INTEGER', fav_count: 'INTEGER',
    rating: 'VARCHAR', file_ext: 'VARCHAR', image_width: 'INTEGER', image_height: 'INTEGER',
    tag_string_artist: 'VARCHAR', tag_string_copyright: 'VARCHAR',
    tag_string_character: 'VARCHAR', tag_string_general: 'VARCHAR', tag_string_meta: 'VARCHAR',
    parent_id: 'BIGINT', is_deleted: 'BOOLEAN'}})
"""
FILES = """
INSERT INTO files
SELECT id, 'images/danbooru_' || id || '_' || md5 || '.' || file_ext, md5,
       image_width, image_height, file_ext, 1000
FROM posts
"""


def build_workspace(out: Path, n: int) -> Path:
    """A workspace with a catalog of `n` synthetic posts (reused when already built)."""
    from tagtune.core.catalog import open_catalog
    from tagtune.recipe.workspace import init_workspace
    from tagtune.synthetic.collection import write_jsonl_dump

    ws_dir = out / f"caption-ws-{n}"
    marker = ws_dir / ".loaded"
    if marker.exists():
        return ws_dir
    dump = out / f"dump-{n}.jsonl"
    if not dump.exists():
        t = time.perf_counter()
        write_jsonl_dump(dump, n, seed=0)
        print(f"dump: {n} posts written in {time.perf_counter() - t:.1f} s -> {dump}")
    ws = init_workspace(ws_dir, force=True)
    ws.catalog_path.unlink(missing_ok=True)
    t = time.perf_counter()
    try:
        from tagtune.ingest.driver import ingest
    except ImportError:  # ingest not available: load the dump with plain SQL
        ingest = None
    if ingest is not None:
        ingest(ws, [dump])
        how = "tagtune ingest"
    with open_catalog(ws.catalog_path) as con:
        if ingest is None:
            con.execute(LOAD.format(dump=str(dump).replace("'", "''")))
            how = "DuckDB SQL"
        con.execute(FILES)
    print(
        f"catalog: loaded with {how} in {time.perf_counter() - t:.1f} s (+ one file row per post)"
    )
    marker.write_text("ok\n")
    return ws_dir


def main() -> None:
    """Build the catalog once, then time `build_captions` on it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="posts in the synthetic dump")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from tagtune.captions.build import build_captions
    from tagtune.captions.tokens import TokenCounter
    from tagtune.core.workspace import open_workspace

    ws = open_workspace(build_workspace(args.out, args.n))
    t = time.perf_counter()
    counter = TokenCounter(", ")
    t_vocab = time.perf_counter() - t
    steps: list[tuple[str, float, float]] = []

    def progress(step: str, done: int, total: int) -> None:
        if not steps or steps[-1][0] != step:  # one line per step (chunks are not listed)
            steps.append((step, time.perf_counter(), time.process_time()))

    t, c = time.perf_counter(), time.process_time()
    summary = build_captions(ws, counter=counter, progress=progress)
    total, cpu = time.perf_counter() - t, time.process_time() - c
    n = summary.captions
    print(f"captions: {n} posts in {total:.2f} s wall = {n / total:,.0f} posts/s; "
          f"{cpu:.2f} CPU-s = {n / cpu:,.0f} posts per CPU-second "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")  # fmt: skip
    print(f"tokenizer {summary.tokenizer}; loading the vocabulary took {t_vocab:.2f} s more")
    ends = [*steps[1:], ("end", t + total, c + cpu)]
    for (step, a, ca), (_, b, cb) in zip(steps, ends, strict=True):
        print(f"  {step:<28} {b - a:6.2f} s wall {cb - ca:6.2f} CPU-s")
    print(f"tokens: mean {summary.tokens_mean}, max {summary.tokens_max}, over {summary.over}")
    print(f"jsonl: {ws.captions_path} ({ws.captions_path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
