"""The latent cache `tagtune prepare` will write, predicted from the catalog's image sizes.

`PlannedLatents` answers `records(post_ids, include_flipped)` like a real `LatentCache`, with
each record's bucket computed from the catalog (`assign_bucket`, as prepare buckets images).
The step plan before prepare (`tagtune prepare --plan`, `tagtune train --dry-run`) counts
training examples through it exactly as training counts the cached ones, so the plan and the
run agree (an image that fails to encode is the only difference, and prepare reports it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tagtune.core.catalog import open_catalog
from tagtune.core.workspace import Workspace
from tagtune.prepare.buckets import Bucket, assign_bucket, make_buckets
from tagtune.recipe.model import BucketConfig


@dataclass(frozen=True)
class PlannedRecord:
    """One latent prepare will cache: post, bucket (w, h), flipped copy or not."""

    post_id: int
    bucket: Bucket
    flipped: bool = False


class PlannedLatents:
    """The records a latent cache would hold for the catalog's included posts with a file."""

    def __init__(self, sizes: dict[int, tuple[int, int]], cfg: BucketConfig) -> None:
        buckets = make_buckets(cfg)
        self.buckets = {
            pid: assign_bucket(w, h, buckets, cfg.no_upscale, cfg.step)
            for pid, (w, h) in sizes.items()
        }
        self.flip = cfg.flip

    def records(
        self, post_ids: Iterable[int] | None = None, include_flipped: bool = False
    ) -> list[PlannedRecord]:
        """Planned latents sorted by (post_id, flipped); flipped copies only with
        `include_flipped` (and only when the recipe caches them)."""
        wanted = self.buckets if post_ids is None else set(post_ids)
        out = []
        for pid in sorted(p for p in wanted if p in self.buckets):
            out.append(PlannedRecord(pid, self.buckets[pid]))
            if include_flipped and self.flip:
                out.append(PlannedRecord(pid, self.buckets[pid], True))
        return out


def planned_latents(ws: Workspace, cfg: BucketConfig) -> PlannedLatents:
    """The latents prepare would cache for this workspace: every included post with an image."""
    with open_catalog(ws.catalog_path, read_only=True) as con:
        rows = con.execute(
            "SELECT posts.id, files.width, files.height FROM posts "
            "JOIN files ON files.post_id = posts.id WHERE posts.excluded IS NULL"
        ).fetchall()
    return PlannedLatents({int(p): (int(w), int(h)) for p, w, h in rows if w and h}, cfg)
