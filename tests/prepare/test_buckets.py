"""Bucket maths: the bucket list, assignment, crop plans / micro-conditioning, step plans."""

from __future__ import annotations

import pytest

from tagtune.core.errors import InputError
from tagtune.prepare.buckets import (
    CropPlan,
    assign_bucket,
    count_buckets,
    crop_rng,
    make_buckets,
    plan_stage,
    plan_steps,
    resize_and_crop_params,
)
from tagtune.recipe.model import BucketConfig, StageConfig, reference_stages

SDXL = BucketConfig()  # resolution 1024, sides 512..2048, step 64
SMALL = BucketConfig(resolution=128, min_side=64, max_side=256, step=64)
SDXL_BUCKETS = make_buckets(SDXL)
SMALL_BUCKETS = make_buckets(SMALL)


# --- the bucket list -------------------------------------------------------------------


def test_small_bucket_list_exact():
    assert SMALL_BUCKETS == [(64, 256), (64, 192), (128, 128), (192, 64), (256, 64)]


def test_sdxl_bucket_list_properties():
    b = SDXL_BUCKETS
    assert len(b) == len(set(b))
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in b)
    assert all(512 <= s <= 2048 for w, h in b for s in (w, h))
    assert all(w * h <= 1024 * 1024 for w, h in b)
    assert all((h, w) in b for w, h in b)  # both orientations
    # the well-known SDXL training sizes are there
    for bucket in [(1024, 1024), (832, 1216), (1216, 832), (896, 1152), (768, 1344), (1344, 768)]:
        assert bucket in b
    assert (b[0], b[-1]) == ((512, 2048), (2048, 512))  # sorted tallest to widest
    ratios = [w / h for w, h in b]
    assert ratios == sorted(ratios)


def test_every_width_gets_its_tallest_bucket():
    # like sd-scripts' list: each width takes the tallest height within the area (and max_side)
    for w in range(512, 2049, 64):
        h = min(2048, (1024 * 1024 // w) // 64 * 64)
        assert h < 512 or ((w, h) in SDXL_BUCKETS and (h, w) in SDXL_BUCKETS)
        assert h == 2048 or w * (h + 64) > 1024 * 1024


# --- assignment ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "bucket"),
    [
        ((1024, 1024), (1024, 1024)),  # square
        ((3000, 3000), (1024, 1024)),  # square, large
        ((1000, 1500), (832, 1216)),  # 2:3 portrait
        ((1500, 1000), (1216, 832)),  # 3:2 landscape
        ((1920, 1080), (1344, 768)),  # 16:9
        ((4000, 500), (2048, 512)),  # panorama clamped to max_side
        ((500, 4000), (512, 2048)),  # tall strip clamped to max_side
        ((300, 200), (1216, 832)),  # small images are upscaled by default
    ],
)
def test_assign_sdxl(size, bucket):
    assert assign_bucket(*size, SDXL_BUCKETS) == bucket


@pytest.mark.parametrize(
    ("size", "bucket"),
    [
        ((128, 128), (128, 128)),
        ((100, 150), (128, 128)),  # 2:3 is nearer 1:1 than 1:3 in log space
        ((96, 192), (64, 192)),  # 1:2 between 1:1 and 1:4: 1:3 is nearest
        ((64, 192), (64, 192)),
        ((1000, 100), (256, 64)),  # 10:1 clamped to the widest bucket
    ],
)
def test_assign_small(size, bucket):
    assert assign_bucket(*size, SMALL_BUCKETS) == bucket


@pytest.mark.parametrize(
    ("buckets", "size", "cfg", "bucket"),
    [
        (SMALL_BUCKETS, (300, 300), SMALL, (128, 128)),  # covers its bucket: unchanged
        (SMALL_BUCKETS, (70, 70), SMALL, (64, 64)),  # smaller square bucket
        (SMALL_BUCKETS, (100, 150), SMALL, (64, 64)),
        (SMALL_BUCKETS, (40, 40), SMALL, (64, 64)),  # never below one step
        (SDXL_BUCKETS, (600, 900), SDXL, (576, 832)),  # 2:3 shape, scaled down
        (SDXL_BUCKETS, (4000, 500), SDXL, (1984, 448)),  # panorama a bit short of 512
        (SDXL_BUCKETS, (1500, 1000), SDXL, (1216, 832)),
    ],
)
def test_assign_no_upscale(buckets, size, cfg, bucket):
    got = assign_bucket(*size, buckets, no_upscale=True, step=cfg.step)
    assert got == bucket
    assert got[0] <= max(size[0], cfg.step) and got[1] <= max(size[1], cfg.step)


def test_ties_are_deterministic_whatever_the_order():
    # a square image is exactly as far from 1:2 as from 2:1: the narrower bucket wins
    assert assign_bucket(100, 100, [(64, 128), (128, 64)]) == (64, 128)
    assert assign_bucket(100, 100, [(128, 64), (64, 128)]) == (64, 128)
    # equal shapes: the larger bucket wins
    assert assign_bucket(100, 100, [(64, 64), (128, 128)]) == (128, 128)


def test_bad_sizes_are_errors():
    with pytest.raises(InputError) as e:
        assign_bucket(0, 10, SMALL_BUCKETS)
    assert str(e.value) == "size = '0x10': image size must be positive"


# --- crop plans and SDXL micro-conditioning --------------------------------------------


@pytest.mark.parametrize(
    ("size", "bucket", "time_ids", "resized"),
    [
        ((1500, 1000), (1216, 832), (1000, 1500, 0, 16, 832, 1216), (832, 1248)),
        ((1000, 1500), (832, 1216), (1500, 1000, 16, 0, 1216, 832), (1248, 832)),
        ((1920, 1080), (1344, 768), (1080, 1920, 0, 10, 768, 1344), (768, 1365)),
        ((4000, 500), (2048, 512), (500, 4000, 0, 1024, 512, 2048), (512, 4096)),
        ((64, 64), (128, 128), (64, 64, 0, 0, 128, 128), (128, 128)),  # upscaled
        ((1024, 1024), (1024, 1024), (1024, 1024, 0, 0, 1024, 1024), (1024, 1024)),
    ],
)
def test_center_crop_micro_conditioning(size, bucket, time_ids, resized):
    plan = resize_and_crop_params(*size, bucket)
    assert plan.time_ids() == time_ids
    assert plan.resized_size == resized
    assert plan.bucket == bucket and not plan.flipped


def test_seeded_random_crop_exact_and_repeatable():
    sha = "ab" * 32
    plan = resize_and_crop_params(1920, 1080, (1344, 768), True, crop_rng(42, sha))
    assert plan.time_ids() == (1080, 1920, 0, 2, 768, 1344)
    again = resize_and_crop_params(1920, 1080, (1344, 768), True, crop_rng(42, sha))
    assert again == plan
    tall = resize_and_crop_params(1000, 2000, (832, 1216), True, crop_rng(42, sha))
    assert tall.time_ids() == (2000, 1000, 432, 0, 1216, 832)
    assert tall.resized_size == (1664, 832)
    lefts = {
        resize_and_crop_params(1920, 1080, (1344, 768), True, crop_rng(s, sha)).crop_top_left[1]
        for s in range(20)
    }
    assert len(lefts) > 1 and all(0 <= x <= 1365 - 1344 for x in lefts)


def test_random_crop_needs_an_rng():
    with pytest.raises(InputError) as e:
        resize_and_crop_params(100, 100, (64, 64), True, None)
    assert str(e.value) == "rng: a random crop needs a seeded rng"


def test_flipped_plan_mirrors_the_crop_left_edge():
    plan = resize_and_crop_params(1920, 1080, (1344, 768))
    flipped = plan.mirrored()
    assert flipped.flipped and flipped.crop_top_left == (0, 1365 - 1344 - 10)
    assert flipped.mirrored() == plan
    assert isinstance(flipped, CropPlan)


# --- counting and the step plan ---------------------------------------------------------


def test_count_buckets():
    counts = count_buckets([(128, 128), (100, 150), (96, 192), (1000, 100), (130, 130)], SMALL)
    assert counts == {(64, 192): 1, (128, 128): 3, (256, 64): 1}


def _stage(**kw) -> StageConfig:
    return StageConfig(name="s", **kw)


@pytest.mark.parametrize(
    ("counts", "kw", "world", "steps_per_epoch"),
    [
        ({(64, 64): 5, (128, 128): 3}, {"batch_size": 4}, 1, 3),  # ceil per bucket: 2 + 1
        ({(64, 64): 8}, {"batch_size": 4}, 1, 2),
        ({(64, 64): 5, (128, 128): 3}, {"batch_size": 4, "gradient_accumulation": 2}, 1, 2),
        ({(64, 64): 5, (128, 128): 3}, {"batch_size": 4, "repeats": 2}, 1, 5),  # 3 + 2
        ({(64, 64): 5, (128, 128): 3}, {"batch_size": 4}, 2, 2),  # 8 per step over 2 GPUs
        ({}, {"batch_size": 4}, 1, 0),
    ],
)
def test_steps_per_epoch(counts, kw, world, steps_per_epoch):
    assert plan_stage(_stage(**kw), counts, world).steps_per_epoch == steps_per_epoch


def test_warmup_from_ratio_or_steps():
    assert plan_stage(_stage(epochs=10, warmup_ratio=0.1), {(64, 64): 40}).warmup_steps == 10
    # ratio x total rounded to the nearest step, as the trainer's scheduler counts it
    assert plan_stage(_stage(epochs=10, warmup_ratio=0.17), {(64, 64): 4}).warmup_steps == 2
    assert plan_stage(_stage(epochs=10, warmup_ratio=0.13), {(64, 64): 4}).warmup_steps == 1
    assert plan_stage(_stage(epochs=10, warmup_steps=7), {(64, 64): 40}).warmup_steps == 7


def test_reference_workflow_plan_is_about_73000_steps():
    main, fav = plan_steps(
        reference_stages(), {"main": {(1024, 1024): 8997}, "favorites": {(1024, 1024): 2317}}
    )
    assert (main.images, main.steps_per_epoch, main.total_steps, main.warmup_steps) == (
        8997,
        2250,
        58_500,
        5_850,
    )
    assert (fav.images, fav.steps_per_epoch, fav.total_steps, fav.warmup_steps) == (
        2317,
        580,
        14_500,
        0,
    )
    assert abs(main.total_steps + fav.total_steps - 72_982) / 72_982 < 0.01


def test_reference_plan_spread_over_buckets_stays_near_the_reference():
    shares = [0.04, 0.08, 0.16, 0.12, 0.3, 0.1, 0.1, 0.06, 0.04]
    buckets = SDXL_BUCKETS[8:17]

    def spread(n: int) -> dict:
        counts = {b: int(n * s) for b, s in zip(buckets, shares, strict=True)}
        counts[(1024, 1024)] += n - sum(counts.values())
        return counts

    plans = plan_steps(reference_stages(), {"main": spread(8997), "favorites": spread(2317)})
    total = sum(p.total_steps for p in plans)
    assert [p.images for p in plans] == [8997, 2317]
    assert total >= 73_000 and abs(total - 72_982) / 72_982 < 0.01
