"""VAE-encode bucketed images into the latent cache, and the reader API the trainer uses.

Reader API (latent_cache.py, re-exported here):

    vae_fingerprint(vae) -> str                          sha256 of the VAE weights
    open_latent_cache(ws_cache_dir, vae_hash) -> LatentCache
    LatentCache.records(post_ids=None, include_flipped=False) -> list[LatentRecord]
    LatentCache.load(records) -> Tensor [B, 4, h/8, w/8] float32, SCALED by 0.13025
    LatentCache.time_ids(records) -> Tensor [B, 6] float32: orig h, w, crop top, left, target h, w

Latents are the mean of the VAE's latent distribution (deterministic, like most trainers'
caches), times the SDXL scaling factor 0.13025, from pixels in [-1, 1]; stored as fp16.

Writer: `encode_images(items, vae, cache_dir, bucket_cfg, workers=2)`. Images are decoded,
resized and cropped in `spawn` worker processes while the main process encodes, batch by
bucket. It is resumable: keys already in completed shards are skipped and shards are atomic.
With several processes (`rank`, `world_size`), rank r takes items i % world_size == r and
writes its own shards and index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from tagtune.models.components import VAE_SCALING_FACTOR
from tagtune.models.vae_bake import vae_fingerprint
from tagtune.prepare.buckets import (
    Bucket,
    CropPlan,
    assign_bucket,
    crop_rng,
    make_buckets,
    resize_and_crop_params,
)
from tagtune.prepare.latent_cache import (
    SHARD_SIZE,
    STORE_DTYPE,
    LatentCache,
    LatentRecord,
    ShardWriter,
    latents_dir,
    make_record,
    open_latent_cache,
    read_index,
    write_manifest,
)
from tagtune.prepare.latent_images import ImageJob, ImageResult, decode_job
from tagtune.recipe.model import BucketConfig

__all__ = [
    "STORE_DTYPE",
    "LatentCache",
    "LatentRecord",
    "PrepareItem",
    "PlannedItem",
    "PrepareResult",
    "Problem",
    "encode_images",
    "open_latent_cache",
    "plan_items",
    "vae_fingerprint",
]


class PrepareItem(NamedTuple):
    """One image to encode: post id, file path, content sha256 and size from the catalog."""

    post_id: int
    path: str
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class Problem:
    """An image that was skipped, for the catalog's problems table (stage 'prepare')."""

    post_id: int
    path: str
    reason: str
    detail: str


@dataclass
class PrepareResult:
    """What one prepare run did, and where the time went."""

    vae_hash: str
    cache_dir: Path
    planned: int = 0
    cached: int = 0
    encoded: int = 0
    latents_written: int = 0
    shards_written: int = 0
    problems: list[Problem] = field(default_factory=list)
    bucket_counts: dict[Bucket, int] = field(default_factory=dict)
    seconds: float = 0.0
    decode_seconds: float = 0.0
    encode_seconds: float = 0.0
    wait_seconds: float = 0.0
    fill_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        """Images encoded per second of wall time."""
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    @property
    def encoder_wait_share(self) -> float:
        """Share of the encoder's time spent waiting for decoded images (0 = never waited)."""
        busy = self.wait_seconds + self.encode_seconds
        return self.wait_seconds / busy if busy > 0 else 0.0

    @property
    def steady_wait_share(self) -> float:
        """Encoder-wait share once the first image arrived (leaves out starting the workers)."""
        busy = self.wait_seconds - self.fill_seconds + self.encode_seconds
        return (self.wait_seconds - self.fill_seconds) / busy if busy > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary for the CLI."""
        return {
            "vae_hash": self.vae_hash,
            "cache_dir": str(self.cache_dir),
            "planned": self.planned,
            "cached": self.cached,
            "encoded": self.encoded,
            "latents_written": self.latents_written,
            "shards_written": self.shards_written,
            "problems": len(self.problems),
            "buckets": {f"{w}x{h}": n for (w, h), n in self.bucket_counts.items()},
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "encoder_wait_share": round(self.encoder_wait_share, 4),
            "steady_wait_share": round(self.steady_wait_share, 4),
        }


@dataclass(frozen=True)
class PlannedItem:
    """An item with its crop plan and the records (keys) it will be cached under."""

    item: PrepareItem
    plan: CropPlan
    records: tuple[LatentRecord, ...]  # unflipped first, then flipped (when flip is on)


def plan_items(items: Iterable[PrepareItem], cfg: BucketConfig, seed: int = 0) -> list[PlannedItem]:
    """The bucket, crop and cache keys of every item, from catalog sizes only (no image I/O)."""
    buckets = make_buckets(cfg)
    planned = []
    for raw in items:
        item = PrepareItem(*raw)
        bucket = assign_bucket(item.width, item.height, buckets, cfg.no_upscale, cfg.step)
        rng = crop_rng(seed, item.sha256) if cfg.random_crop else None
        plan = resize_and_crop_params(item.width, item.height, bucket, cfg.random_crop, rng)
        plans = (plan, plan.mirrored()) if cfg.flip else (plan,)
        recs = tuple(make_record(item.post_id, item.sha256, p) for p in plans)
        planned.append(PlannedItem(item, plan, recs))
    return planned


def _to_pixels(arrays: Sequence[np.ndarray], device: Any, dtype: torch.dtype) -> torch.Tensor:
    """uint8 HxWx3 arrays -> [B, 3, H, W] in [-1, 1]."""
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return batch.to(device=device, dtype=dtype).div_(127.5).sub_(1.0)


@torch.no_grad()
def _encode(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Scaled latent means of a pixel batch."""
    return vae.encode(pixels).latent_dist.mean * VAE_SCALING_FACTOR


def _results(
    jobs: list[ImageJob], workers: int, window: int, stats: PrepareResult
) -> Iterator[ImageResult]:
    """Decoded images; with workers > 0 they come in completion order from `spawn` processes
    that keep up to `window` jobs in flight while the caller encodes.

    Time the caller spends blocked here is encoder wait; the wait for the very first image
    (starting the workers, filling the pipeline) is also counted as `fill_seconds`.
    """
    if workers <= 0:
        for job in jobs:
            res = decode_job(job)
            stats.wait_seconds += res.seconds
            yield res
        return
    import multiprocessing as mp

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    todo = iter(jobs)
    pending: set[Future[ImageResult]] = set()

    def fill() -> None:
        while len(pending) < window and (job := next(todo, None)) is not None:
            pending.add(pool.submit(decode_job, job))

    try:
        fill()
        first = True
        while pending:
            start = time.perf_counter()
            done, still = wait(pending, return_when=FIRST_COMPLETED)
            waited = time.perf_counter() - start
            stats.wait_seconds += waited
            if first:
                stats.fill_seconds, first = waited, False
            pending.clear()
            pending.update(still)
            fill()
            for fut in done:
                yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def encode_images(
    items: Iterable[PrepareItem | tuple],
    vae: Any,
    cache_dir: str | Path,
    bucket_cfg: BucketConfig,
    workers: int = 2,
    *,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 4,
    shard_size: int = SHARD_SIZE,
    limit: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    show_progress: bool = False,
) -> PrepareResult:
    """Encode every item not yet cached into `cache_dir/latents/vae-<hash>/` (a workspace's
    `cache/` folder); items are (post_id, path, sha256, width, height).

    Rank 0 writes the manifest of all items (what the trainer's `records()` serves); this rank
    then encodes items i % world_size == rank. `limit` stops after that many images (what is
    done is kept), `on_batch(images_done)` is called after each encoded batch (test hook).
    A corrupt image becomes a Problem and is skipped. Whatever is encoded is written even when
    the run is interrupted.
    """
    start = time.perf_counter()
    vae_hash = vae_fingerprint(vae)
    folder = latents_dir(cache_dir, vae_hash)
    folder.mkdir(parents=True, exist_ok=True)
    planned = plan_items(items, bucket_cfg, seed)
    if rank == 0:
        settings = {"buckets": bucket_cfg.model_dump(), "seed": seed}
        write_manifest(folder, vae_hash, [r for p in planned for r in p.records], settings)
    result = PrepareResult(vae_hash=vae_hash, cache_dir=folder)
    writer = ShardWriter(folder, rank, vae_hash, shard_size)
    done_keys = {k for keys in read_index(folder).values() for k in keys}
    mine = [p for i, p in enumerate(planned) if i % world_size == rank]
    result.planned = len(mine)
    for p in mine:
        result.bucket_counts[p.plan.bucket] = result.bucket_counts.get(p.plan.bucket, 0) + 1
    todo = [p for p in mine if any(r.key not in done_keys for r in p.records)]
    result.cached = len(mine) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    jobs = [
        ImageJob(i, str(p.item.path), p.item.width, p.item.height, p.plan)
        for i, p in enumerate(todo)
    ]
    batcher = _Batcher(vae, writer, result, done_keys, bucket_cfg.flip, batch_size, on_batch)
    try:
        with _progress(show_progress, len(jobs)) as bar:
            task = bar.add_task("encoding", total=len(jobs))
            batcher.on_encoded = lambda n: bar.update(task, advance=n)  # done = encoded
            for res in _results(jobs, workers, max(16, workers * 8), result):
                p = todo[res.index]
                result.decode_seconds += res.seconds
                if res.pixels is None:
                    result.problems.append(
                        Problem(p.item.post_id, str(p.item.path), res.reason, res.error or "")
                    )
                    bar.update(task, advance=1)
                else:
                    batcher.add(p, res.pixels)
            batcher.finish()
    finally:
        writer.flush()  # whatever was encoded is kept, even on an error or Ctrl-C
        result.shards_written = writer.shards_written
        result.seconds = time.perf_counter() - start
    return result


@dataclass
class _Batcher:
    """Groups cropped images by bucket and VAE-encodes each full group as one batch
    (with its mirrored copies when flip is on), handing the latents to the shard writer."""

    vae: Any
    writer: ShardWriter
    result: PrepareResult
    done_keys: set[str]
    flip: bool
    batch_size: int
    on_batch: Callable[[int], None] | None
    groups: dict[Bucket, list[tuple[PlannedItem, np.ndarray]]] = field(default_factory=dict)
    on_encoded: Callable[[int], None] | None = None

    def add(self, planned: PlannedItem, pixels: np.ndarray) -> None:
        """Queue one image; encode its bucket's group once it holds a batch."""
        group = self.groups.setdefault(planned.plan.bucket, [])
        group.append((planned, pixels))
        if len(group) >= self.batch_size:
            self.encode(planned.plan.bucket)

    def finish(self) -> None:
        """Encode every partly filled group."""
        for bucket in list(self.groups):
            self.encode(bucket)

    def encode(self, bucket: Bucket) -> None:
        """Encode one bucket's group and queue its latents not already cached."""
        group = self.groups.pop(bucket, [])
        if not group:
            return
        t0 = time.perf_counter()
        arrays = [px for _, px in group]
        entries = [(p, p.records[0]) for p, _ in group]
        if self.flip:
            arrays += [np.ascontiguousarray(px[:, ::-1]) for _, px in group]
            entries += [(p, p.records[1]) for p, _ in group]
        param = next(self.vae.parameters())
        latents = _encode(self.vae, _to_pixels(arrays, param.device, param.dtype))
        for (p, rec), lat in zip(entries, latents, strict=True):
            if rec.key not in self.done_keys:
                self.writer.add(rec, p.item.sha256, lat)
                self.result.latents_written += 1
        self.result.encode_seconds += time.perf_counter() - t0
        self.result.encoded += len(group)
        if self.on_encoded is not None:
            self.on_encoded(len(group))
        if self.on_batch is not None:
            self.on_batch(self.result.encoded)


def _progress(show: bool, total: int) -> Any:
    """A rich progress bar with images/s, or a silent stand-in."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} images/s" if speed else "- images/s")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not show or total == 0,
    )
