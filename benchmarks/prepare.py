"""Benchmark `tagtune prepare`: decode + bucket + resize + crop in workers, VAE-encode in the main process.

Writes N synthetic 2-megapixel JPEGs of coloured shapes (several aspect ratios; kept in
bench-out/ between runs), then encodes them with the tiny VAE (`build_tiny_sdxl().vae`'s weights) into
a fresh latent cache with buckets at resolution 1024 (the SDXL default buckets).

    .venv/bin/python benchmarks/prepare.py [--n 500] [--workers 2] [--inline] [--device cpu]

Reports images/s, the time the encoder spent waiting for decoded images (target: ~0 with
2 workers, i.e. decoding and resizing never leave the encoder waiting), and the share of
the work spent decoding/resizing. `--inline` also runs with no workers for comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import time
from pathlib import Path

# 2-megapixel sizes in common aspect ratios (w, h)
SIZES = [(1632, 1224), (1224, 1632), (1448, 1448), (1920, 1080), (1080, 1920), (1732, 1155)]


def _write_image(args: tuple[Path, int, int, int]) -> None:
    """One JPEG of random coloured shapes (top-level: runs in worker processes)."""
    from PIL import Image, ImageDraw

    path, w, h, seed = args
    rng = random.Random(seed)
    im = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randrange(50, w // 2), y0 + rng.randrange(50, h // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=colour)
    tmp = path.with_suffix(".tmp")
    im.save(tmp, format="JPEG", quality=90)
    tmp.rename(path)


def make_images(folder: Path, n: int, seed: int = 0) -> list[tuple]:
    """N JPEGs of random coloured shapes (made once, in parallel); items (post_id, path,
    sha256, w, h)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    jobs, items = [], []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        path = folder / f"{i + 1:06d}.jpg"
        if not path.exists():
            jobs.append((path, w, h, seed * 1_000_003 + i))
        items.append((i + 1, path, w, h))
    if jobs:
        with ProcessPoolExecutor(os.cpu_count(), mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(_write_image, jobs, chunksize=8))
    return [
        (pid, str(path), hashlib.sha256(path.read_bytes()).hexdigest(), w, h)
        for pid, path, w, h in items
    ]


def tiny_vae(seed: int = 0):
    """The VAE of `build_tiny_sdxl(seed)` (same config and weights), built alone so the
    benchmark needs neither the text encoders nor the CLIP vocabulary."""
    import torch
    from diffusers import AutoencoderKL

    from tagtune.models.tiny import VAE_CONFIG

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return AutoencoderKL(**VAE_CONFIG).eval()


def run(items: list[tuple], vae, cache: Path, workers: int) -> dict:
    """Encode every item into a fresh cache; the figures of that run."""
    from tagtune.prepare.encode import encode_images
    from tagtune.recipe.model import BucketConfig

    shutil.rmtree(cache, ignore_errors=True)
    r = encode_images(items, vae, cache, BucketConfig(), workers, show_progress=True)
    busy = r.decode_seconds + r.encode_seconds
    return {
        "workers": workers,
        "images": r.encoded,
        "seconds": r.seconds,
        "images_per_s": r.images_per_s,
        "encode_s": r.encode_seconds,
        "wait_s": r.wait_seconds,
        "encoder_wait_share": r.encoder_wait_share,
        "fill_s": r.fill_seconds,
        "steady_wait_share": r.steady_wait_share,
        "decode_s": r.decode_seconds,
        "decode_share": r.decode_seconds / busy if busy else 0.0,
        "buckets": len(r.bucket_counts),
        "problems": len(r.problems),
    }


def main() -> None:
    """Parse arguments, build the data and the tiny VAE, run, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="images (default 500)")
    ap.add_argument("--workers", type=int, default=2, help="decode workers (default 2)")
    ap.add_argument("--inline", action="store_true", help="also run with no workers")
    ap.add_argument("--device", default="cpu", help="encoder device: cpu (default) or cuda")
    ap.add_argument("--out", type=Path, default=Path("bench-out"), help="scratch folder")
    args = ap.parse_args()

    import torch

    t0 = time.perf_counter()
    items = make_images(args.out / "prepare-images", args.n)
    print(f"{len(items)} synthetic 2 MP JPEGs ready in {time.perf_counter() - t0:.1f} s")
    vae = tiny_vae(seed=0).to(args.device)
    print(
        f"encoder on {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
    )
    runs = [args.workers] + ([0] if args.inline and args.workers else [])
    for workers in runs:
        f = run(items, vae, args.out / "prepare-cache", workers)
        print(
            f"workers={f['workers']}: {f['images']} images in {f['seconds']:.1f} s = "
            f"{f['images_per_s']:.1f} images/s ({f['buckets']} buckets, {f['problems']} problems)"
        )
        print(
            f"  encoder: {f['encode_s']:.1f} s encoding, {f['wait_s']:.2f} s waiting for images "
            f"(encoder-wait share {f['encoder_wait_share']:.1%}; {f['fill_s']:.2f} s of it before the "
            f"first image, {f['steady_wait_share']:.1%} after)"
        )
        print(
            f"  decode+resize+crop: {f['decode_s']:.1f} s of worker time "
            f"({1000 * f['decode_s'] / max(1, f['images']):.0f} ms/image), "
            f"{f['decode_share']:.1%} of all work"
        )
    shutil.rmtree(args.out / "prepare-cache", ignore_errors=True)


if __name__ == "__main__":
    main()
