"""Training speed of the tiny SDXL on CPU at batch 4 with cached latents.

Prints optimizer steps per second and the share of each step spent waiting for data
(reading latents and time ids from the latent cache; target under 5%).

    .venv/bin/python benchmarks/train_step.py [--n STEPS] [--size 64] [--memory]

By default the latents come from a real latent cache (`tagtune.prepare.encode.encode_images` over
synthetic coloured-shape images, 64x64 px -> 8x8 latents); `--memory` uses in-memory latents.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch


class TimedLatents:
    """Latent source proxy that adds up the time spent loading data."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.vae_hash = getattr(inner, "vae_hash", "")
        self.seconds = 0.0

    def records(self, *a, **kw):
        return self.inner.records(*a, **kw)

    def load(self, records):
        t = time.perf_counter()
        out = self.inner.load(records)
        self.seconds += time.perf_counter() - t
        return out

    def time_ids(self, records):
        t = time.perf_counter()
        out = self.inner.time_ids(records)
        self.seconds += time.perf_counter() - t
        return out


class StepClock:
    """Monitor stand-in that records the wall time between optimizer steps."""

    def __init__(self, latents: TimedLatents) -> None:
        self.latents = latents
        self.times: list[float] = []
        self.waits: list[float] = []
        self.t = time.perf_counter()
        self.w = 0.0

    def start(self, *a) -> None:
        self.t = time.perf_counter()
        self.w = self.latents.seconds

    def step(self, *a) -> None:
        t = time.perf_counter()
        self.times.append(t - self.t)
        self.waits.append(self.latents.seconds - self.w)
        self.t, self.w = t, self.latents.seconds

    def close(self) -> None:
        pass


def cached_latents(root: Path, components, n_images: int, size: int):
    """Encode synthetic shape images into a workspace latent cache; return the cache."""
    import hashlib

    import numpy as np

    from tagtune.prepare.encode import (
        PrepareItem,
        encode_images,
        open_latent_cache,
        vae_fingerprint,
    )
    from tagtune.recipe.model import BucketConfig
    from tagtune.synthetic.collection import shape_image

    rng = np.random.default_rng(0)
    items = []
    for i in range(1, n_images + 1):
        img, _ = shape_image(rng, (size, size))
        path = root / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        items.append(
            PrepareItem(i, str(path), hashlib.sha256(path.read_bytes()).hexdigest(), size, size)
        )
    cfg = BucketConfig(resolution=size, min_side=size, max_side=size, step=size)
    encode_images(items, components.vae, root / "cache", cfg, workers=0)
    return open_latent_cache(root / "cache", vae_fingerprint(components.vae))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="optimizer steps to time (default 40)")
    parser.add_argument("--size", type=int, default=64, help="image side in px (64 -> 8x8 latents)")
    parser.add_argument(
        "--memory", action="store_true", help="in-memory latents instead of a cache"
    )
    parser.add_argument(
        "--mixed-precision", default="no", choices=["no", "bf16", "fp16"], help="CUDA only"
    )
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw8bit", "adafactor"])
    args = parser.parse_args()
    torch.set_num_threads(1)

    from tagtune.models.tiny import build_tiny_sdxl
    from tagtune.synthetic.runs import InMemoryLatents, make_training_workspace, tiny_train_recipe
    from tagtune.train.examples import load_examples
    from tagtune.train.loop import StageJob, train_stage
    from tagtune.train.runtime import make_runtime

    batch = 4
    n_images = batch * args.n
    recipe = tiny_train_recipe(
        epochs=1, batch_size=batch, lr_text_encoder=0.0, lr_text_encoder_2=0.0,
        optimizer=args.optimizer,
    )  # fmt: skip
    recipe.train.mixed_precision = args.mixed_precision
    runtime = make_runtime(args.mixed_precision)
    base = build_tiny_sdxl(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws, mem = make_training_workspace(root / "ws", recipe, n=n_images, sizes=[(args.size,) * 2])
        source = mem if args.memory else cached_latents(ws.root, base, n_images, args.size)
        assert isinstance(mem, InMemoryLatents)
        timed = TimedLatents(source)
        stage = recipe.train.stages[0]
        examples, _ = load_examples(ws, stage, timed)
        clock = StepClock(timed)
        components = copy.deepcopy(base)
        for module in components.modules().values():
            module.to(runtime.device)
        job = StageJob(
            components=components, stage=stage, stage_index=0, train=recipe.train,
            examples=examples, latents=timed, stage_dir=root / "run", runtime=runtime,
            monitor=clock,
        )  # fmt: skip
        train_stage(job)
    steps = clock.times[1:]  # the first step includes one-time warm-up
    waits = clock.waits[1:]
    device = f"{runtime.device.type} ({args.mixed_precision}, {args.optimizer})"
    print(f"tiny SDXL, {device}, 1 CPU thread, batch {batch}, {args.size}x{args.size} px "
          f"({args.size // 8}x{args.size // 8} latents), U-Net trained, "
          f"latents from {'memory' if args.memory else 'the latent cache'}")  # fmt: skip
    print(f"steps timed:        {len(steps)}")
    print(f"steps/s:            {len(steps) / sum(steps):.2f}")
    print(f"median s/step:      {statistics.median(steps):.3f}")
    print(f"data wait share:    {100 * sum(waits) / sum(steps):.2f}% (target < 5%)")


if __name__ == "__main__":
    main()
