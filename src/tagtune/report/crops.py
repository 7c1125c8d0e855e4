"""The report's Buckets section: images per bucket and the crop training sees, on the original.

The source is the latent cache (the newest `cache/latents/vae-*/manifest.json`: bucket and
crop box of every cached latent); before `tagtune prepare` it is the plan from the catalog's
image sizes. Each thumbnail is the original image, shrunk, with everything outside the crop
darkened and the crop box outlined. Images that fell into no bucket are the included images
of the stages' subsets that have no cached latent, with the reason prepare recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from tagtune.core.catalog import subset_where
from tagtune.core.errors import TagtuneError
from tagtune.core.workspace import Workspace
from tagtune.prepare.buckets import resize_and_crop_params
from tagtune.prepare.encode import open_latent_cache
from tagtune.report import charts
from tagtune.report.assets import Assets

THUMBS_PER_BUCKET = 3
THUMB_SIDE = 176
UNBUCKETED_ROWS = 200
SHADE = 150  # 0..255: how dark the part outside the crop is drawn
BOX_COLOR = (255, 59, 48)


@dataclass
class Thumb:
    """One crop thumbnail (url None: the original could not be read)."""

    post_id: int
    url: str | None
    label: str


@dataclass
class BucketsSection:
    """What the Buckets section shows."""

    source: str = ""
    chart: str | None = None
    buckets: list[tuple[str, int, list[Thumb]]] = field(default_factory=list)
    unbucketed: list[tuple[str, int, str, str]] = field(default_factory=list)
    unbucketed_total: int = 0
    note: str = ""


def crop_thumbnail(path: str | Path, bucket: tuple[int, int], crop_top_left: tuple[int, int]):
    """The original image scaled to fit THUMB_SIDE, with the bucket's crop box drawn on it."""
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(path) as im:
        width, height = im.size
        im.draft("RGB", (THUMB_SIDE * 2, THUMB_SIDE * 2))
        im = ImageOps.contain(im.convert("RGB"), (THUMB_SIDE, THUMB_SIDE))
    plan = resize_and_crop_params(width, height, bucket)
    (rh, rw), (top, left) = plan.resized_size, crop_top_left
    sx, sy = im.width / rw, im.height / rh
    box = (left * sx, top * sy, (left + bucket[0]) * sx - 1, (top + bucket[1]) * sy - 1)
    mask = Image.new("L", im.size, SHADE)
    ImageDraw.Draw(mask).rectangle(box, fill=0)
    im = Image.composite(Image.new("RGB", im.size, (0, 0, 0)), im, mask)
    ImageDraw.Draw(im).rectangle(box, outline=BOX_COLOR, width=2)
    return im


def _newest_cache(ws: Workspace) -> Any:
    manifests = sorted(
        ws.cache_dir.glob("latents/vae-*/manifest.json"), key=lambda p: p.stat().st_mtime
    )
    if not manifests:
        return None
    return open_latent_cache(ws.cache_dir, manifests[-1].parent.name.removeprefix("vae-"))


def _order(label_counts: dict[tuple[int, int], Any]) -> list[tuple[int, int]]:
    return sorted(label_counts, key=lambda b: (b[0] / b[1], b[0]))


def _thumbs(con, ws: Workspace, assets: Assets, records: list) -> list[Thumb]:
    paths = dict(
        con.execute(
            "SELECT post_id, path FROM files WHERE post_id IN (SELECT unnest(?::BIGINT[]))",
            [[r.post_id for r in records]],
        ).fetchall()
    )
    thumbs = []
    for r in records:
        if r.post_id not in paths:
            continue
        path = ws.resolve(paths[r.post_id])
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = 0
        key = f"{path}|{stamp}|{r.bucket}|{r.crop_top_left}|{THUMB_SIDE}"
        url = assets.image(
            "crop",
            key,
            lambda p=path, r=r: crop_thumbnail(p, r.bucket, r.crop_top_left),
            label=f"post {r.post_id} ({path})",
        )
        h, w = r.original_size
        top, left = r.crop_top_left
        thumbs.append(Thumb(r.post_id, url, f"post {r.post_id}: {w}x{h}, crop at {left},{top}"))
    return thumbs


def _unbucketed(con, subsets: list[str], done: list[int]) -> tuple[list, int]:
    """Included images of the stages' subsets with no cached latent, with prepare's reason."""
    where = " OR ".join(f"({subset_where(s)})" for s in subsets) or "FALSE"
    joined = (
        "FROM posts JOIN files ON files.post_id = posts.id "
        "LEFT JOIN problems p ON p.post_id = posts.id AND p.stage = 'prepare' "
        f"WHERE ({where}) AND posts.id NOT IN (SELECT unnest(?::BIGINT[]))"
    )
    total = int(con.execute(f"SELECT count(DISTINCT posts.id) {joined}", [done]).fetchone()[0])
    rows = con.execute(
        "SELECT files.path, posts.id, coalesce(p.reason, 'not prepared yet'), "
        f"coalesce(p.detail, '') {joined} ORDER BY posts.id LIMIT ?",
        [done, UNBUCKETED_ROWS],
    ).fetchall()
    return rows, total


def buckets_section(
    con: duckdb.DuckDBPyConnection, ws: Workspace, subsets: list[str], assets: Assets
) -> BucketsSection:
    """Gather the Buckets section (catalog open read-only; `subsets` are the stages')."""
    section = BucketsSection()
    try:
        cache = _newest_cache(ws)
    except TagtuneError as exc:
        cache, section.note = None, f"latent cache unreadable: {exc.message()}"
    if cache is None:
        from tagtune.prepare.run import plan_workspace

        section.source = "planned from the catalog's image sizes (no latent cache yet)"
        try:
            counts = plan_workspace(ws).bucket_counts
        except TagtuneError as exc:
            section.note = exc.message()
            counts = {}
        section.buckets = [(f"{w}x{h}", n, []) for (w, h), n in counts.items()]
    else:
        section.source = f"latent cache {cache.folder.name} (what training reads)"
        records = cache.records()
        per_bucket: dict[tuple[int, int], list] = {}
        for r in records:
            per_bucket.setdefault(tuple(r.bucket), []).append(r)
        for b in _order(per_bucket):
            rs = per_bucket[b]
            picks = [rs[i * len(rs) // THUMBS_PER_BUCKET] for i in range(THUMBS_PER_BUCKET)]
            picks = list(dict.fromkeys(picks))  # fewer images than thumbnails: no repeats
            section.buckets.append((f"{b[0]}x{b[1]}", len(rs), _thumbs(con, ws, assets, picks)))
        cache.close()
        try:
            done = sorted({r.post_id for r in records})
            section.unbucketed, section.unbucketed_total = _unbucketed(con, subsets, done)
        except TagtuneError as exc:
            section.note = exc.message()
    if section.buckets:
        svg = charts.bar_chart(
            [b for b, _, _ in section.buckets],
            [n for _, n, _ in section.buckets],
            "images per bucket (width x height)",
            ylabel="images",
        )
        section.chart = assets.chart(svg)
    return section
