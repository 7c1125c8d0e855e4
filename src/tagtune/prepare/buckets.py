"""SDXL aspect buckets, resize/crop plans, SDXL micro-conditioning and the step plan.

Pure functions, no image I/O: the plan of a whole collection is computed from the catalog's
image dimensions alone (`tagtune prepare WS --plan`).

- `make_buckets(cfg)`: the bucket list, like sd-scripts' `make_bucket_resolutions`: for every
  width from min_side to max_side in `step`s, the tallest height (a multiple of `step`, at most
  max_side) whose area stays within resolution^2, in both orientations, plus the square.
- `assign_bucket(w, h, buckets, no_upscale)`: the bucket nearest the image's aspect ratio,
  measured in log space (so 2:1 and 1:2 are equally far from 1:1). Ties go to the larger bucket,
  then the narrower one. With `no_upscale`, an image smaller than its bucket goes to a smaller
  bucket of the same shape (both sides scaled down by the same factor, floored to `step`).
- `resize_and_crop_params(...)`: resize to cover the bucket (aspect kept), then crop (center, or
  seeded random). The values are SDXL's micro-conditioning: time ids = original size (h, w),
  crop top-left (top, left) in resized pixels, target size (h, w) = the bucket.
- `plan_steps(...)`: optimizer steps per stage. Every batch comes from one bucket, so an epoch is
  sum over buckets of ceil(n_b * repeats / (batch * world)) batches, divided (rounded up) by the
  gradient accumulation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import reduce

from tagtune.core.errors import InputError
from tagtune.recipe.model import BucketConfig, StageConfig

Bucket = tuple[int, int]
"""A bucket as (width, height) in pixels."""


def make_buckets(cfg: BucketConfig) -> list[Bucket]:
    """Every bucket for a config, sorted from the tallest to the widest (by aspect ratio).

    Sides are multiples of `cfg.step` within [min_side, max_side]; area <= resolution^2.
    """
    max_area = cfg.resolution * cfg.resolution
    found: set[Bucket] = set()
    square = (cfg.resolution // cfg.step) * cfg.step
    if cfg.min_side <= square <= cfg.max_side:
        found.add((square, square))
    for width in range(cfg.min_side, cfg.max_side + 1, cfg.step):
        height = min(cfg.max_side, (max_area // width) // cfg.step * cfg.step)
        if height >= cfg.min_side:
            found.add((width, height))
            found.add((height, width))
    return sorted(found, key=lambda b: (b[0] / b[1], b[0]))


def _log_distance(width: int, height: int, bucket: Bucket) -> float:
    # Rounded so that mirror-image cases tie exactly instead of by float noise.
    return round(abs(math.log(width / height) - math.log(bucket[0] / bucket[1])), 12)


def bucket_step(buckets: Iterable[Bucket]) -> int:
    """The grid the buckets sit on: the greatest common divisor of every side."""
    return reduce(math.gcd, (side for b in buckets for side in b))


def assign_bucket(
    width: int,
    height: int,
    buckets: Sequence[Bucket],
    no_upscale: bool = False,
    step: int | None = None,
) -> Bucket:
    """The bucket (width, height) for an image: nearest aspect ratio in log space.

    Ties: the larger bucket wins, then the narrower one, so the answer never depends on the
    order of `buckets`. With `no_upscale`, an image that does not cover its bucket gets a smaller
    bucket of the same shape that it does cover (sides floored to `step`, default the buckets'
    own grid, never below one step).
    """
    if width <= 0 or height <= 0:
        raise InputError("image size must be positive", field="size", value=f"{width}x{height}")
    if not buckets:
        raise InputError("no buckets to choose from", field="buckets")
    best = min(buckets, key=lambda b: (_log_distance(width, height, b), -b[0] * b[1], b[0]))
    if not no_upscale or (width >= best[0] and height >= best[1]):
        return best
    grid = step or bucket_step(buckets)
    scale = min(width / best[0], height / best[1])
    return (
        max(grid, int(best[0] * scale) // grid * grid),
        max(grid, int(best[1] * scale) // grid * grid),
    )


@dataclass(frozen=True)
class CropPlan:
    """How one image becomes one bucket-sized picture, and its SDXL micro-conditioning.

    Sizes are (height, width) and positions (top, left), as SDXL's time ids; `bucket` is
    (width, height) like the bucket list.
    """

    bucket: Bucket
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_size: tuple[int, int]
    flipped: bool = False

    def time_ids(self) -> tuple[int, int, int, int, int, int]:
        """SDXL add_time_ids: original h, w, crop top, left, target h, w."""
        return (*self.original_size, *self.crop_top_left, *self.target_size)

    def mirrored(self) -> CropPlan:
        """The plan of the horizontally flipped crop: same pixels mirrored, so the crop's left
        edge is measured from the other side of the resized image (as sd-scripts does)."""
        top, left = self.crop_top_left
        mirrored_left = self.resized_size[1] - self.target_size[1] - left
        return replace(self, crop_top_left=(top, mirrored_left), flipped=not self.flipped)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def resize_and_crop_params(
    orig_w: int,
    orig_h: int,
    bucket: Bucket,
    random_crop: bool = False,
    rng: random.Random | None = None,
) -> CropPlan:
    """Resize (aspect kept) to cover `bucket`, then crop it out: center, or at a random offset.

    `rng` must be given for a random crop (seed it per image, e.g. from the content hash, so the
    same image always gets the same crop and its cached latent is reused).
    """
    bw, bh = bucket
    if orig_w <= 0 or orig_h <= 0:
        raise InputError("image size must be positive", field="size", value=f"{orig_w}x{orig_h}")
    scale = max(bw / orig_w, bh / orig_h)
    rw = max(bw, _round_half_up(orig_w * scale))
    rh = max(bh, _round_half_up(orig_h * scale))
    if random_crop:
        if rng is None:
            raise InputError("a random crop needs a seeded rng", field="rng")
        top, left = rng.randint(0, rh - bh), rng.randint(0, rw - bw)
    else:
        top, left = (rh - bh) // 2, (rw - bw) // 2
    return CropPlan(
        bucket=(bw, bh),
        original_size=(orig_h, orig_w),
        resized_size=(rh, rw),
        crop_top_left=(top, left),
        target_size=(bh, bw),
    )


def crop_rng(seed: int, sha256: str) -> random.Random:
    """The per-image random-crop generator: same seed and image content, same crop."""
    return random.Random(f"{seed}:{sha256}")


def count_buckets(sizes: Iterable[tuple[int, int]], cfg: BucketConfig) -> dict[Bucket, int]:
    """How many images (width, height) land in each bucket, in bucket order."""
    buckets = make_buckets(cfg)
    counts: dict[Bucket, int] = {}
    for w, h in sizes:
        b = assign_bucket(w, h, buckets, cfg.no_upscale, cfg.step)
        counts[b] = counts.get(b, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (kv[0][0] / kv[0][1], kv[0][0])))


@dataclass(frozen=True)
class StagePlan:
    """Step counts of one training stage."""

    name: str
    images: int
    epochs: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def plan_stage(stage: StageConfig, counts: Mapping[Bucket, int], world_size: int = 1) -> StagePlan:
    """Optimizer steps of one stage from its images per bucket.

    A batch never mixes buckets, so each bucket rounds up on its own. Warm-up is
    `warmup_steps`, or `warmup_ratio` of the total rounded to the nearest step (as the
    trainer's scheduler counts it). Flip augmentation does not change the counts (a
    flipped latent replaces, not adds).
    """
    per_batch = stage.batch_size * max(1, world_size)
    batches = sum(math.ceil(n * stage.repeats / per_batch) for n in counts.values() if n > 0)
    steps_per_epoch = math.ceil(batches / stage.gradient_accumulation)
    total = steps_per_epoch * stage.epochs
    warmup = stage.warmup_steps or int(round(stage.warmup_ratio * total))
    return StagePlan(
        name=stage.name,
        images=sum(counts.values()),
        epochs=stage.epochs,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=warmup,
    )


def plan_steps(
    stages: Sequence[StageConfig],
    counts_per_stage: Mapping[str, Mapping[Bucket, int]],
    world_size: int = 1,
) -> list[StagePlan]:
    """Step counts of every stage, in order; `counts_per_stage` maps stage name -> bucket counts."""
    return [plan_stage(s, counts_per_stage.get(s.name, {}), world_size) for s in stages]
