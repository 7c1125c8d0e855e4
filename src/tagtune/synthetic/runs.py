"""Synthetic training inputs for tests, benchmarks and crash drills: no images, no VAE.

`InMemoryLatents` serves the latent-cache reader API from memory; `make_training_workspace`
writes a workspace whose catalog holds posts and captions with harmless tags;
`make_theme_workspace` one of two image themes named by their caption, with a real latent cache
(the learning test's collection). Run
`python -m tagtune.synthetic.runs WS [--resume] [--stage NAME]` to train the tiny model on
such a workspace (what the SIGKILL and 2-process tests launch; `TAGTUNE_KILL_AT_STEP=N` kills
it with SIGKILL once step N is done).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tagtune.core.catalog import open_catalog
from tagtune.core.workspace import Workspace, open_workspace
from tagtune.ingest.verdicts import sync_with_recipe
from tagtune.recipe.model import BucketConfig, Recipe
from tagtune.recipe.workspace import init_workspace
from tagtune.synthetic.collection import THEMES, theme_image
from tagtune.train.data import keyed_generator

TAGS = ["1girl", "solo", "long_hair", "smile", "blue_sky", "red_circle", "green_square", "outdoors"]


@dataclass(frozen=True)
class MemoryRecord:
    """A latent in memory: post, bucket (w, h), flipped."""

    post_id: int
    bucket: tuple[int, int]
    flipped: bool = False

    @property
    def key(self) -> str:
        return f"{self.post_id}-{int(self.flipped)}"


class InMemoryLatents:
    """Latent-cache reader API over latents drawn from (seed, post id) — or given ones."""

    vae_hash = "synthetic"

    def __init__(self, buckets: dict[int, tuple[int, int]], seed: int = 0) -> None:
        self.buckets = dict(buckets)
        self.seed = seed
        self.overrides: dict[int, torch.Tensor] = {}

    def records(self, post_ids: Iterable[int] | None = None, include_flipped: bool = False):
        """Records of the given posts (all by default), sorted by post id."""
        ids = sorted(self.buckets if post_ids is None else set(post_ids) & set(self.buckets))
        return [MemoryRecord(p, self.buckets[p]) for p in ids]

    def latent(self, post_id: int) -> torch.Tensor:
        """The latent [4, h/8, w/8] of a post (deterministic)."""
        if post_id in self.overrides:
            return self.overrides[post_id]
        w, h = self.buckets[post_id]
        gen = keyed_generator("latent", self.seed, post_id)
        return torch.randn((4, h // 8, w // 8), generator=gen) * 0.8

    def load(self, records: Sequence[MemoryRecord]) -> torch.Tensor:
        """Latents of records of one bucket as [B, 4, h/8, w/8]."""
        return torch.stack([self.latent(r.post_id) for r in records])

    def time_ids(self, records: Sequence[MemoryRecord]) -> torch.Tensor:
        """Time ids [B, 6]: original = target = bucket size, no crop."""
        return torch.tensor(
            [[r.bucket[1], r.bucket[0], 0, 0, r.bucket[1], r.bucket[0]] for r in records],
            dtype=torch.float32,
        )


def tiny_train_recipe(**stage_overrides) -> Recipe:
    """A recipe for the tiny model on CPU: one 2-epoch adamw stage, 64 px, fp32, no checkpointing."""
    recipe = Recipe()
    recipe.train.mixed_precision = "no"
    recipe.train.weight_dtype = "fp32"
    recipe.train.gradient_checkpointing = False
    stage = {
        "name": "main",
        "epochs": 2,
        "batch_size": 2,
        "optimizer": "adamw",
        "lr_unet": 1e-3,
        "lr_text_encoder": 1e-4,
        "lr_text_encoder_2": 1e-4,
        "warmup_ratio": 0.1,
        "max_token_length": 75,
        **stage_overrides,
    }
    recipe.train.stages = [type(recipe.train.stages[0])(**stage)]
    return recipe


def make_training_workspace(
    root: Path,
    recipe: Recipe,
    n: int = 8,
    sizes: Sequence[tuple[int, int]] = ((64, 64),),
    favorites: Iterable[int] = (),
    seed: int = 0,
    files: bool = False,
) -> tuple[Workspace, InMemoryLatents]:
    """A workspace with `n` posts and captions (harmless tags) and their in-memory latents.

    Post i gets bucket sizes[i % len(sizes)]; posts in `favorites` are marked favorite.
    `files` also records an image file of that size per post in the catalog (the files are
    not written: enough for the plans, which read sizes only).
    """
    ws = init_workspace(root, recipe, force=True)
    fav = set(favorites)
    buckets = {}
    with open_catalog(ws.catalog_path) as con:
        for i in range(1, n + 1):
            tags = [TAGS[(i + k) % len(TAGS)].replace("_", " ") for k in range(4)]
            con.execute("INSERT INTO posts (id, favorite) VALUES (?, ?)", [i, i in fav])
            con.execute(
                "INSERT INTO captions (post_id, caption, tags, groups, tokens) VALUES (?, ?, ?, ?, ?)",
                [i, ", ".join(tags), tags, ["general"] * len(tags), 2 * len(tags)],
            )
            buckets[i] = tuple(sizes[(i - 1) % len(sizes)])
            if files:
                con.execute(
                    "INSERT INTO files (post_id, path, sha256, width, height) VALUES (?, ?, ?, ?, ?)",
                    [i, f"images/{i}.png", f"{i:064x}", *buckets[i]],
                )
        sync_with_recipe(con, recipe)  # judged with this recipe, as ingest and caption leave it
    return ws, InMemoryLatents(buckets, seed)


def make_theme_workspace(
    root: Path, recipe: Recipe, vae: Any, n: int = 40, seed: int = 0
) -> tuple[Workspace, Any]:
    """A workspace of `n` images of two themes (alternating) whose caption is the theme tag.

    The images (64x64 px, `tagtune.synthetic.collection.theme_image`) are written under WS/images and
    encoded by `vae` into the workspace's latent cache, as `tagtune prepare` does. Returns the
    workspace and the latent cache.
    """
    import hashlib

    import numpy as np

    from tagtune.prepare.encode import PrepareItem, encode_images, vae_fingerprint
    from tagtune.prepare.latent_cache import open_latent_cache

    ws = init_workspace(root, recipe, force=True)
    rng = np.random.default_rng(seed)
    names = list(THEMES)
    items = []
    with open_catalog(ws.catalog_path) as con:
        for i in range(1, n + 1):
            theme = names[i % 2]
            path = ws.root / "images" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            theme_image(theme, rng).save(path)
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            items.append(PrepareItem(i, str(path), sha, 64, 64))
            tag = theme.replace("_", " ")
            con.execute("INSERT INTO posts (id, tags_general) VALUES (?, ?)", [i, [theme]])
            con.execute(
                "INSERT INTO captions (post_id, caption, tags, groups, tokens) VALUES (?, ?, ?, ?, ?)",
                [i, tag, [tag], ["general"], 2],
            )
        sync_with_recipe(con, recipe)
    cfg = BucketConfig(resolution=64, min_side=64, max_side=64, step=64)
    encode_images(items, vae, ws.cache_dir, cfg, workers=0)
    return ws, open_latent_cache(ws.cache_dir, vae_fingerprint(vae))


def latents_for(ws: Workspace, seed: int = 0, size: tuple[int, int] = (64, 64)) -> InMemoryLatents:
    """In-memory latents for every captioned post of a workspace, all in one bucket."""
    with open_catalog(ws.catalog_path, read_only=True) as con:
        ids = [
            r[0] for r in con.execute("SELECT post_id FROM captions ORDER BY post_id").fetchall()
        ]
    return InMemoryLatents(dict.fromkeys(ids, size), seed)


def free_port() -> int:
    """A TCP port free on this machine now, for the rendezvous of a multi-process drill."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    """Train the tiny model (seed 0) on a synthetic workspace: the crash and DDP drills."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("workspace")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stage", default=None)
    parser.add_argument("--dump-weights", default=None, help="folder for each rank's final weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from tagtune.models.tiny import build_tiny_sdxl
    from tagtune.train.runtime import kill_switch
    from tagtune.train.stages import run_training

    ws = open_workspace(args.workspace)
    components = build_tiny_sdxl(0)
    run_training(
        ws,
        stage=args.stage,
        resume=args.resume,
        components=components,
        latents=latents_for(ws),
        progress=False,
        after_step=kill_switch(int(os.environ.get("TAGTUNE_KILL_AT_STEP", "0"))),
    )
    if args.dump_weights:
        import torch.distributed as dist
        from safetensors.torch import save_file

        rank = dist.get_rank() if dist.is_initialized() else 0
        out = Path(args.dump_weights)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("unet", "text_encoder", "text_encoder_2"):
            sd = {k: v.contiguous() for k, v in getattr(components, name).state_dict().items()}
            save_file(sd, out / f"{name}-rank{rank}.safetensors")


if __name__ == "__main__":
    main()
