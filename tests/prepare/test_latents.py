"""The latent cache: keys, reuse, resume, bad images, the reader API the trainer uses."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from tagtune.core.errors import InputError, WorkspaceError
from tagtune.models.components import VAE_SCALING_FACTOR
from tagtune.prepare.buckets import resize_and_crop_params
from tagtune.prepare.encode import (
    PrepareItem,
    encode_images,
    open_latent_cache,
    vae_fingerprint,
)
from tagtune.prepare.latent_images import ImageJob, decode_job
from tagtune.recipe.model import BucketConfig

CFG = BucketConfig(resolution=128, min_side=64, max_side=256, step=64)
SIZES = [(128, 128), (96, 192), (192, 96), (150, 100), (100, 150), (64, 64)]


def _image(path: Path, size: tuple[int, int], seed: int) -> Path:
    w, h = size
    im = Image.new("RGB", size, (40 * seed % 256, 120, 200))
    draw = ImageDraw.Draw(im)
    draw.ellipse((w // 8, h // 8, w // 2, h // 2), fill=(255, 200, 0))
    draw.rectangle((w // 2, h // 2, w - 4, h - 4), fill=(30, 160, 60))
    im.save(path)
    return path


def _item(post_id: int, path: Path, size: tuple[int, int]) -> PrepareItem:
    return PrepareItem(post_id, str(path), hashlib.sha256(path.read_bytes()).hexdigest(), *size)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[PrepareItem]:
    root = tmp_path_factory.mktemp("images")
    return [
        _item(i + 1, _image(root / f"{i + 1}.png", size, i), size) for i, size in enumerate(SIZES)
    ]


@pytest.fixture(scope="module")
def vae(tiny_sdxl):
    return tiny_sdxl.vae


def test_fingerprint_follows_the_weights(vae):
    other = copy.deepcopy(vae)
    assert vae_fingerprint(other) == vae_fingerprint(vae)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert vae_fingerprint(other) != vae_fingerprint(vae)
    assert len(vae_fingerprint(vae)) == 64


def test_fingerprint_counts_values_not_the_dtype_they_are_held_in(vae):
    exact = copy.deepcopy(vae)
    with torch.no_grad():
        for p in exact.parameters():
            p.copy_(p.bfloat16().float())  # values bf16 holds exactly
    held_bf16 = copy.deepcopy(exact).to(torch.bfloat16)
    assert vae_fingerprint(held_bf16) == vae_fingerprint(exact)
    assert vae_fingerprint(exact) != vae_fingerprint(vae)  # rounding changed the values


def test_records_latents_and_time_ids(images, vae, tmp_path):
    result = encode_images(images, vae, tmp_path, CFG, workers=0)
    assert (result.planned, result.encoded, result.cached, result.problems) == (6, 6, 0, [])
    assert result.bucket_counts == {(128, 128): 4, (64, 192): 1, (192, 64): 1}
    cache = open_latent_cache(tmp_path, vae_fingerprint(vae))
    records = cache.records()
    assert [r.post_id for r in records] == [1, 2, 3, 4, 5, 6]
    r2, r4 = records[1], records[3]
    assert (r2.bucket, r2.original_size, r2.crop_top_left, r2.target_size) == (
        (64, 192),
        (192, 96),
        (0, 16),
        (192, 64),
    )
    assert r4.key == f"{images[3].sha256}_128x128_0_32_n" and not r4.flipped
    assert cache.time_ids([r2, r2]).tolist() == [[192, 96, 0, 16, 192, 64]] * 2
    batch = cache.load([r4, records[0]])
    assert batch.shape == (2, 4, 16, 16) and batch.dtype == torch.float32
    # the cache holds SCALED means of the VAE's latent distribution
    pixels = decode_job(
        ImageJob(0, images[3].path, 150, 100, resize_and_crop_params(150, 100, (128, 128)))
    ).pixels
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        want = vae.encode(x).latent_dist.mean * VAE_SCALING_FACTOR
    torch.testing.assert_close(batch[:1], want, atol=2e-3, rtol=2e-3)
    assert sorted(p.name for p in result.cache_dir.iterdir()) == [
        "index-r0.json",
        "manifest.json",
        "shard-r0-000001.safetensors",
    ]


def test_unchanged_inputs_reuse_the_cache(images, vae, tmp_path):
    encode_images(images, vae, tmp_path, CFG, workers=0)
    again = encode_images(images, vae, tmp_path, CFG, workers=0)
    assert (again.encoded, again.cached, again.shards_written) == (0, 6, 0)


def test_a_changed_vae_forces_reencoding(images, vae, tmp_path):
    first = encode_images(images, vae, tmp_path, CFG, workers=0)
    other = copy.deepcopy(vae)
    with torch.no_grad():
        next(other.parameters()).mul_(1.01)
    second = encode_images(images, other, tmp_path, CFG, workers=0)
    assert (second.encoded, second.cached) == (6, 0)
    assert second.cache_dir != first.cache_dir
    # the folder name (first 16 hex) opens it too
    assert open_latent_cache(tmp_path, second.vae_hash[:16]).vae_hash == second.vae_hash
    with pytest.raises(WorkspaceError) as e:
        open_latent_cache(tmp_path, "0" * 64)
    assert str(e.value) == (
        f"{tmp_path / 'latents' / ('vae-' + '0' * 16)}: no latent cache for this VAE"
    )


def test_a_changed_bucket_config_forces_reencoding_and_unchanged_keys_are_reused(
    images, vae, tmp_path
):
    encode_images(images, vae, tmp_path, CFG, workers=0)
    bigger = BucketConfig(resolution=192, min_side=64, max_side=256, step=64)
    second = encode_images(images, vae, tmp_path, bigger, workers=0)
    assert (second.encoded, second.cached) == (6, 0)
    cache = open_latent_cache(tmp_path, vae_fingerprint(vae))
    assert {r.bucket for r in cache.records()} == {(192, 192), (128, 256), (256, 128)}
    # back to the first setting: every latent is still there, and only those are served
    third = encode_images(images, vae, tmp_path, CFG, workers=0)
    assert (third.encoded, third.cached) == (0, 6)
    cache = open_latent_cache(tmp_path, vae_fingerprint(vae))
    assert {r.bucket for r in cache.records()} == {(128, 128), (64, 192), (192, 64)}
    # a random crop moves only the crops that have room to move
    moved = CFG.model_copy(update={"random_crop": True})
    fourth = encode_images(images, vae, tmp_path, moved, workers=0, seed=3)
    assert fourth.encoded + fourth.cached == 6 and fourth.cached >= 2  # the two square images


def test_flip_caches_a_mirrored_latent_with_mirrored_crop(images, vae, tmp_path):
    flip = CFG.model_copy(update={"flip": True, "random_crop": True})
    result = encode_images(images[:4], vae, tmp_path, flip, workers=0, seed=1)
    assert (result.encoded, result.latents_written) == (4, 8)
    cache = open_latent_cache(tmp_path, vae_fingerprint(vae))
    assert len(cache.records()) == 4
    both = cache.records([4], include_flipped=True)
    # 150x100 -> resized 192x128 -> 128x128 crop: a left edge at L mirrors to 64 - L
    left = both[0].crop_top_left[1]
    assert [(r.flipped, r.crop_top_left) for r in both] == [
        (False, (0, left)),
        (True, (0, 64 - left)),
    ]
    assert both[0].key.endswith(f"_128x128_0_{left}_n") and both[1].key.endswith(
        f"_0_{64 - left}_f"
    )
    plain, mirrored = cache.load(both[:1]), cache.load(both[1:])
    assert not torch.allclose(plain, mirrored)


def test_resume_after_a_stop_encodes_only_the_rest(images, vae, tmp_path):
    first = encode_images(images, vae, tmp_path, CFG, workers=0, shard_size=2, limit=3)
    assert (first.encoded, first.shards_written) == (3, 2)
    cache = open_latent_cache(tmp_path, vae_fingerprint(vae))
    assert cache.missing() == [4, 5, 6]
    second = encode_images(images, vae, tmp_path, CFG, workers=0, shard_size=2)
    assert (second.encoded, second.cached) == (3, 3)
    assert open_latent_cache(tmp_path, vae_fingerprint(vae)).missing() == []


def test_resume_after_a_crash_keeps_what_was_encoded(images, vae, tmp_path):
    def crash(done: int) -> None:
        if done == 2:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        encode_images(images, vae, tmp_path, CFG, workers=0, batch_size=1, on_batch=crash)
    # a half-written shard from a hard kill is only a temporary file: ignored
    folder = next((tmp_path / "latents").iterdir())
    (folder / ".shard-r0-000099.safetensors.abc.tmp").write_bytes(b"half")
    second = encode_images(images, vae, tmp_path, CFG, workers=0, batch_size=1)
    assert (second.cached, second.encoded) == (2, 4)


def test_a_shard_missing_from_the_index_is_adopted(images, vae, tmp_path):
    first = encode_images(images, vae, tmp_path, CFG, workers=0, shard_size=4)
    (first.cache_dir / "index-r0.json").unlink()  # crash between shard rename and index write
    second = encode_images(images, vae, tmp_path, CFG, workers=0, shard_size=4)
    assert (second.encoded, second.cached) == (0, 6)
    index = json.loads((first.cache_dir / "index-r0.json").read_text())
    assert sorted(index["shards"]) == ["shard-r0-000001.safetensors", "shard-r0-000002.safetensors"]


def test_a_corrupt_image_is_reported_and_skipped(images, vae, tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(images[0].path).read_bytes()[:200])
    wrong_size = PrepareItem(9, images[3].path, images[3].sha256, 100, 100)
    items = [
        *images[:2],
        PrepareItem(7, str(garbage), "1" * 64, 100, 100),
        PrepareItem(8, str(truncated), "2" * 64, 128, 128),
        wrong_size,
    ]
    result = encode_images(items, vae, tmp_path, CFG, workers=0)
    assert result.encoded == 2
    assert [(p.post_id, p.reason) for p in result.problems] == [
        (7, "unreadable"),
        (8, "unreadable"),
        (9, "size-mismatch"),
    ]
    assert result.problems[0].detail == f"cannot identify image file '{garbage}'"
    assert result.problems[2].detail == (
        "image is 150x100 but the catalog says 100x100; run `tagtune ingest` again"
    )
    cache = open_latent_cache(tmp_path, vae_fingerprint(vae))
    assert [r.post_id for r in cache.records()] == [1, 2]
    assert cache.missing() == [7, 8, 9]


def test_ranks_encode_their_own_share(images, vae, tmp_path):
    r0 = encode_images(images, vae, tmp_path, CFG, workers=0, rank=0, world_size=2)
    r1 = encode_images(images, vae, tmp_path, CFG, workers=0, rank=1, world_size=2)
    assert (r0.encoded, r1.encoded) == (3, 3)
    names = sorted(p.name for p in r0.cache_dir.glob("shard-*"))
    assert names == ["shard-r0-000001.safetensors", "shard-r1-000001.safetensors"]
    cache = open_latent_cache(tmp_path, vae_fingerprint(vae))
    assert [r.post_id for r in cache.records()] == [1, 2, 3, 4, 5, 6]
    # a later single-process run finds everything done
    assert encode_images(images, vae, tmp_path, CFG, workers=0).cached == 6


def test_worker_processes_give_the_same_latents(images, vae, tmp_path):
    inline = encode_images(images, vae, tmp_path / "a", CFG, workers=0)
    pooled = encode_images(images, vae, tmp_path / "b", CFG, workers=2)
    assert pooled.encoded == inline.encoded == 6
    a = open_latent_cache(tmp_path / "a", inline.vae_hash)
    b = open_latent_cache(tmp_path / "b", pooled.vae_hash)
    for ra, rb in zip(a.records(), b.records(), strict=True):
        assert ra == rb
        assert torch.equal(a.load([ra]), b.load([rb]))


def test_load_refuses_a_batch_that_mixes_buckets(images, vae, tmp_path):
    encode_images(images, vae, tmp_path, CFG, workers=0)
    cache = open_latent_cache(tmp_path, vae_fingerprint(vae))
    records = cache.records([1, 2])
    with pytest.raises(InputError) as e:
        cache.load(records)
    assert str(e.value) == (
        "records = [(64, 192), (128, 128)]: a batch mixes buckets (allowed: records of one bucket)"
    )


def test_progress_counts_encoded_images_not_decoded_ones(vae, tmp_path, monkeypatch):
    import contextlib

    import tagtune.prepare.encode as latents

    advances: list[int] = []

    class Bar:
        def add_task(self, *_args, **_kwargs):
            return 0

        def update(self, _task, advance: int) -> None:
            advances.append(advance)

    monkeypatch.setattr(latents, "_progress", lambda *_: contextlib.nullcontext(Bar()))
    same = [_item(i, _image(tmp_path / f"{i}.png", (128, 128), i), (128, 128)) for i in range(5)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    items = [*same, PrepareItem(9, str(bad), "0" * 64, 128, 128)]
    result = encode_images(items, vae, tmp_path / "cache", CFG, workers=0, batch_size=4)
    assert result.encoded == 5 and len(result.problems) == 1
    # one bucket: a batch of 4, the broken file, then the last image when the run finishes
    assert advances == [4, 1, 1]
