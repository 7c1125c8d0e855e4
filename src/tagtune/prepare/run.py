"""`tagtune prepare WS`: bucket every included image and fill the latent cache.

- `plan_workspace(ws)`: the bucket table and per-stage step counts from catalog sizes alone.
- `prepare_workspace(ws)`: encode every included image of every stage's subset with the
  recipe's VAE (`model.base`'s, or `model.vae` baked in when set: what training and export use).
  Under `accelerate launch` each process encodes its own share (rank r: items i % world == r).
  Unreadable images go to the catalog's problems table with stage 'prepare'.
- `bucket_chart(counts, out)`: a histogram of images per bucket (PNG, written atomically).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagtune.core.atomic import atomic_path
from tagtune.core.catalog import CatalogBusyError, check_subset, open_catalog
from tagtune.core.errors import RecipeError, WorkspaceError
from tagtune.core.outputs import Inputs, claim_output
from tagtune.core.subsets import SubsetOrigin, stage_origin
from tagtune.core.workspace import Workspace
from tagtune.prepare.buckets import Bucket, StagePlan, count_buckets, plan_steps
from tagtune.prepare.encode import PrepareItem, PrepareResult, Problem, encode_images
from tagtune.recipe.workspace import workspace_recipe

PREPARE_STAGE = "prepare"


@dataclass(frozen=True)
class PreparePlan:
    """Images per bucket (all included images) and the step counts of each stage."""

    images: int
    bucket_counts: dict[Bucket, int]
    stages: list[StagePlan]

    @property
    def total_steps(self) -> int:
        """Optimizer steps over every stage."""
        return sum(s.total_steps for s in self.stages)

    @property
    def total_epochs(self) -> int:
        """Epochs over every stage."""
        return sum(s.epochs for s in self.stages)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (what `tagtune prepare WS --plan --json` prints)."""
        return {
            "images": self.images,
            "buckets": {f"{w}x{h}": n for (w, h), n in self.bucket_counts.items()},
            "stages": [
                {
                    "name": s.name,
                    "images": s.images,
                    "images_per_epoch": s.images_per_epoch,
                    "epochs": s.epochs,
                    "steps_per_epoch": s.steps_per_epoch,
                    "total_steps": s.total_steps,
                    "warmup_steps": s.warmup_steps,
                }
                for s in self.stages
            ],
            "total_epochs": self.total_epochs,
            "total_steps": self.total_steps,
        }


def _items_sql(where: str) -> str:
    return (
        "SELECT posts.id, files.path, files.sha256, files.width, files.height "
        "FROM posts JOIN files ON files.post_id = posts.id "
        f"WHERE {where} ORDER BY posts.id"
    )


def catalog_items(
    con: Any, subsets: Sequence[str], root: Path, fields: Sequence[str | SubsetOrigin] = ()
) -> list[PrepareItem]:
    """Included posts with an image file in any of `subsets` (relative paths resolved
    against the workspace `root`), ordered by post id. `fields` name where each subset
    came from (recipe keys), for errors."""
    names = [*fields, *(["subset"] * (len(subsets) - len(fields)))]
    wheres = [check_subset(con, s, f) for s, f in zip(subsets, names, strict=False)]
    where = " OR ".join(f"({w})" for w in wheres) or "FALSE"
    return [
        PrepareItem(int(pid), str(root / path), sha, int(w), int(h))
        for pid, path, sha, w, h in con.execute(_items_sql(where)).fetchall()
    ]


def plan_workspace(ws: Workspace, world_size: int = 1) -> PreparePlan:
    """Bucket table and step plan of a workspace, from the catalog's image sizes only."""
    recipe = workspace_recipe(ws)
    cfg = recipe.buckets
    with open_catalog(ws.catalog_path, read_only=True) as con:
        stages = recipe.train.stages
        fields = [stage_origin(stages, s, ws.recipe_path) for s in stages]
        all_items = catalog_items(con, [s.subset for s in stages], ws.root, fields)
        repeats = post_repeats(con)
        stage_items = {
            s.name: catalog_items(con, [s.subset], ws.root, [f])
            for s, f in zip(stages, fields, strict=True)
        }
    per_stage = {
        name: count_buckets(((i.width, i.height) for i in items), cfg)
        for name, items in stage_items.items()
    }
    shown = {
        name: count_buckets(
            ((i.width, i.height) for i in items), cfg, (repeats.get(i.post_id, 1) for i in items)
        )
        for name, items in stage_items.items()
    }
    return PreparePlan(
        images=len(all_items),
        bucket_counts=count_buckets(((i.width, i.height) for i in all_items), cfg),
        stages=plan_steps(recipe.train.stages, per_stage, world_size, shown),
    )


def post_repeats(con: Any) -> dict[int, int]:
    """Post id -> repeats of the posts shown more than once an epoch (kohya folders' N)."""
    return {
        int(pid): int(n)
        for pid, n in con.execute("SELECT id, repeats FROM posts WHERE repeats > 1").fetchall()
    }


def _require_base(ws: Workspace) -> None:
    if not workspace_recipe(ws).model.base:
        raise RecipeError(
            "no base model set; prepare encodes images with its VAE",
            file=ws.recipe_path,
            field="model.base",
            hint="set model.base to a single-file SDXL .safetensors or a diffusers folder",
        )


def load_recipe_vae(ws: Workspace) -> Any:
    """The VAE that training will use: the recipe's model (`load_recipe_model`: the base with
    `model.vae` baked in when set), so the latent cache is keyed by the VAE training finds."""
    _require_base(ws)
    from tagtune.models.recipe_model import load_recipe_model

    return load_recipe_model(ws, tokenizers=False).vae.eval()


def _record_problems(ws: Workspace, post_ids: Sequence[int], problems: Sequence[Problem]) -> None:
    """Replace this run's earlier 'prepare' problems for `post_ids` with the new ones.

    Several processes may finish at once, so a locked catalog is retried for a while.
    """
    import duckdb

    deadline = time.monotonic() + 60
    while True:
        try:
            with open_catalog(ws.catalog_path) as con:
                con.execute("BEGIN")
                if post_ids:
                    con.execute(
                        "DELETE FROM problems WHERE stage = ? "
                        "AND list_contains(?::BIGINT[], post_id)",
                        [PREPARE_STAGE, list(post_ids)],
                    )
                if problems:
                    con.executemany(
                        "INSERT INTO problems (path, post_id, reason, detail, stage) "
                        "VALUES (?, ?, ?, ?, ?)",
                        [(p.path, p.post_id, p.reason, p.detail, PREPARE_STAGE) for p in problems],
                    )
                con.execute("COMMIT")
            return
        except (duckdb.IOException, CatalogBusyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def prepare_workspace(
    ws: Workspace,
    workers: int = 2,
    *,
    vae: Any = None,
    rank: int | None = None,
    world_size: int | None = None,
    limit: int | None = None,
    vae_batch_size: int = 4,
    show_progress: bool = False,
) -> PrepareResult:
    """Encode every included image of every stage into `WS/cache/latents/` (resumable).

    `vae` defaults to the recipe's (see `load_recipe_vae`); `rank`/`world_size` default to
    accelerate's `PartialState` (one process unless launched with `accelerate launch`).
    """
    recipe = workspace_recipe(ws)
    if vae is None:
        _require_base(ws)
    with open_catalog(ws.catalog_path, read_only=True) as con:
        stages = recipe.train.stages
        items = catalog_items(
            con,
            [s.subset for s in stages],
            ws.root,
            [stage_origin(stages, s, ws.recipe_path) for s in stages],
        )
    if not items:
        raise WorkspaceError(
            "no included images to prepare",
            file=ws.catalog_path,
            hint="run `tagtune ingest WS SOURCE` with images first",
        )
    device = None
    if rank is None or world_size is None:
        import torch
        from accelerate import PartialState

        # cpu=True lets a CPU-only `accelerate launch`/torchrun start gloo instead of one process
        state = PartialState(cpu=not torch.cuda.is_available())
        rank, world_size, device = state.process_index, state.num_processes, state.device
    if vae is None:
        vae = load_recipe_vae(ws)
        if device is not None:
            vae = vae.to(device)
    result = encode_images(
        items,
        vae,
        ws.cache_dir,
        recipe.buckets,
        workers,
        seed=recipe.train.seed,
        rank=rank,
        world_size=world_size,
        limit=limit,
        batch_size=vae_batch_size,
        show_progress=show_progress,
    )
    mine = [it.post_id for i, it in enumerate(items) if i % world_size == rank]
    _record_problems(ws, mine, result.problems)
    return result


def bucket_chart(
    counts: Mapping[Bucket, int],
    out: str | Path,
    title: str = "",
    force: bool = False,
    inputs: Inputs = (),
) -> Path:
    """Bar chart of images per bucket (tallest to widest), written atomically as PNG.

    An existing `out` is replaced only with `force`, never one of `inputs` (`outputs`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not counts:
        raise WorkspaceError("no images to chart", field="buckets", hint="run `tagtune ingest`")
    claim_output(out, force=force, inputs=inputs)
    labels = [f"{w}x{h}" for w, h in counts]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(labels) + 2), 4.5), dpi=100)
    try:
        bars = ax.bar(range(len(labels)), list(counts.values()), color="#4c72b0")
        ax.bar_label(bars, fontsize=7)
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("images")
        ax.set_xlabel("bucket (width x height, tallest to widest)")
        ax.set_title(title or f"{sum(counts.values())} images in {len(counts)} buckets")
        fig.tight_layout()
        out = Path(out)
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return out
