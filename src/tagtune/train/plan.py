"""`tagtune train --dry-run`: steps per stage and a GPU memory estimate, without a model.

Steps come from the latent cache when there is exactly one (bucketed batches, as training
counts them); otherwise from caption counts alone (one bucket assumed), which is said.
"""

from __future__ import annotations

import math
from typing import Any

from tagtune.core.catalog import check_subset, open_catalog
from tagtune.core.subsets import stage_origin
from tagtune.core.workspace import Workspace
from tagtune.recipe.workspace import workspace_recipe
from tagtune.train.data import steps_per_epoch
from tagtune.train.memory import estimate_memory, trained_parameters
from tagtune.train.optim import warmup_steps


def _only_cache(ws: Workspace) -> Any:
    folders = sorted((ws.cache_dir / "latents").glob("vae-*"))
    if len(folders) != 1:
        return None
    from tagtune.prepare.encode import open_latent_cache

    try:
        return open_latent_cache(ws.cache_dir, folders[0].name.removeprefix("vae-"))
    except Exception:
        return None


def dry_run(
    ws: Workspace, latents: Any = None, world_size: int = 1, zero2: bool = False
) -> dict[str, Any]:
    """Per stage: images, images shown per epoch (each image's folder repeats times the
    stage's `repeats`), steps per epoch, steps, warm-up, and the memory estimate (GiB)
    per GPU, for `world_size` processes (DDP, or DeepSpeed ZeRO-2 with `zero2`)."""
    from tagtune.train.stages import load_examples
    from tagtune.train.validation import choose_held_out

    recipe = workspace_recipe(ws)
    latents = latents if latents is not None else _only_cache(ws)
    stages = []
    held = (
        {h.post_id for h in choose_held_out(ws, recipe, latents)} if latents is not None else set()
    )
    for st in recipe.train.stages:
        if latents is not None:
            examples, _ = load_examples(ws, st, latents, recipe.buckets.flip, held)
            images = len({e.post_id for e in examples})
            shown = sum({e.post_id: e.repeats for e in examples}.values())
            per_epoch = steps_per_epoch(examples, st, world_size)
            source = "latent cache"
        else:
            images = shown = 0
            if ws.catalog_path.exists():
                with open_catalog(ws.catalog_path, read_only=True) as con:
                    origin = stage_origin(recipe.train.stages, st, ws.recipe_path)
                    where = check_subset(con, st.subset, origin)
                    images, shown = con.execute(
                        "SELECT count(*), coalesce(sum(coalesce(posts.repeats, 1)), 0) FROM "
                        f"captions c JOIN posts ON posts.id = c.post_id WHERE {where}"
                    ).fetchone()
            batches = math.ceil(shown * st.repeats / (st.batch_size * world_size))
            per_epoch = math.ceil(batches / st.gradient_accumulation)
            source = "captions (no latent cache: one bucket assumed)"
        total = per_epoch * st.epochs
        mem = estimate_memory(
            st, recipe.train, sampling=bool(recipe.train.sample_every_n_epochs),
            zero_processes=world_size if zero2 else 0,
        )  # fmt: skip
        stages.append(
            {
                "name": st.name,
                "subset": st.subset,
                "images": images,
                "images_per_epoch": shown * st.repeats,
                "epochs": st.epochs,
                "steps_per_epoch": per_epoch,
                "steps": total,
                "warmup_steps": warmup_steps(st, total),
                "optimizer": st.optimizer,
                "method": st.method,
                "trained_parameters": trained_parameters(st),
                "steps_from": source,
                "memory_gib_estimate": mem.to_json(),
            }
        )
    return {
        "run": recipe.train.run,
        "mixed_precision": recipe.train.mixed_precision,
        "gradient_checkpointing": recipe.train.gradient_checkpointing,
        "resolution": "1024x1024",
        "processes": world_size,
        "scheme": "DeepSpeed ZeRO-2" if zero2 else ("DDP" if world_size > 1 else "one process"),
        "stages": stages,
        "total_steps": sum(s["steps"] for s in stages),
        "note": "memory figures are estimates for the real SDXL at 1024x1024, per GPU",
    }
