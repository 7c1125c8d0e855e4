"""`tagtune train --dry-run` and `tagtune prepare --plan`: images and steps per stage, counted
the way training counts them, and every problem a real run would meet (`train.preflight`).

Both count the examples `load_examples` gives training (captioned posts of the stage's subset,
the run's held-out images left out, flipped copies when `buckets.flip`), bucketed as in the
latent cache: the cache itself once prepared, before that the cache prepare will write
(`prepare.planned`). So the plan, the dry run and the run agree on images and steps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from tagtune.core.errors import TagtuneError
from tagtune.core.workspace import Workspace
from tagtune.prepare.buckets import StagePlan, plan_stage
from tagtune.prepare.planned import planned_latents
from tagtune.prepare.run import PreparePlan, plan_workspace
from tagtune.recipe.model import Recipe
from tagtune.recipe.workspace import workspace_recipe
from tagtune.train.memory import estimate_memory, trained_parameters
from tagtune.train.preflight import (
    Problem,
    cache_problem,
    data_problems,
    machine_problems,
)
from tagtune.train.sampling import sampling_planned


def stage_plans(
    recipe: Recipe, examples: dict[str, list[Any]], world_size: int = 1
) -> list[StagePlan]:
    """Steps of every stage from its training examples (images: distinct posts)."""
    plans = []
    for st in recipe.train.stages:
        found = examples.get(st.name, [])
        counts = Counter(tuple(e.bucket) for e in found)
        shown: Counter[tuple[int, int]] = Counter()
        for e in found:  # each image with its own repeats (a kohya folder's N)
            shown[tuple(e.bucket)] += e.repeats
        plan = plan_stage(st, counts, world_size, shown=shown)
        per_post = {e.post_id: e.repeats for e in found}
        plans.append(replace(
            plan, images=len(per_post), images_per_epoch=sum(per_post.values()) * st.repeats
        ))  # fmt: skip
    return plans


def prepare_plan(ws: Workspace, world_size: int = 1) -> PreparePlan:
    """`tagtune prepare --plan`: the bucket table of every included image, and each stage's
    images and steps as training will count them (no image is read)."""
    recipe = workspace_recipe(ws)
    plan = plan_workspace(ws, world_size)
    everything = range(len(recipe.train.stages))
    _, examples = data_problems(ws, recipe, everything, planned_latents(ws, recipe.buckets), False)
    return replace(plan, stages=stage_plans(recipe, examples, world_size))


def recipe_latents(ws: Workspace, recipe: Recipe) -> tuple[Any, bool, list[Problem]]:
    """(latents, cached, problems): the cache of the recipe's VAE when prepared, else the
    planned one; loading the recipe's VAE (to fingerprint it) is the only model work."""
    from tagtune.prepare.encode import open_latent_cache

    planned = planned_latents(ws, recipe.buckets) if ws.catalog_path.is_file() else None
    if not recipe.model.base:
        return planned, False, [Problem("no base model set", str(ws.recipe_path), "model.base")]
    try:
        from tagtune.models.recipe_model import load_recipe_model

        fingerprint = load_recipe_model(ws, recipe, tokenizers=False).vae_source.fingerprint
    except TagtuneError as exc:
        return planned, False, [Problem(exc.message(), str(ws.recipe_path), "model.base")]
    missing = cache_problem(ws, fingerprint)
    if missing is not None:
        return planned, False, [missing]
    return open_latent_cache(ws.cache_dir, fingerprint), True, []


def dry_run(
    ws: Workspace, latents: Any = None, world_size: int = 1, zero2: bool = False
) -> dict[str, Any]:
    """Per stage: images, images shown per epoch (each image's folder repeats times the
    stage's `repeats`), steps per epoch, steps, warm-up, and the memory estimate (GiB) per
    GPU for `world_size` processes (DDP, or DeepSpeed ZeRO-2 with `zero2`); and `problems`:
    everything a real run would refuse (errors) or note (warnings), all at once."""
    from tagtune.train.optim import warmup_steps

    recipe = workspace_recipe(ws)
    everything = range(len(recipe.train.stages))
    problems = machine_problems(recipe, everything, str(ws.recipe_path), world_size, zero2)
    cached = latents is not None
    if latents is None:
        latents, cached, found = recipe_latents(ws, recipe)
        problems += found
    examples: dict[str, list[Any]] = {}
    if latents is not None:
        more, examples = data_problems(ws, recipe, everything, latents, cached)
        problems += more
    elif not ws.catalog_path.is_file():
        problems.append(Problem("no catalog: run `tagtune ingest` first", str(ws.catalog_path)))
    stages = []
    for st, plan in zip(
        recipe.train.stages, stage_plans(recipe, examples, world_size), strict=True
    ):
        mem = estimate_memory(
            st, recipe.train, sampling=sampling_planned(recipe.train),
            zero_processes=world_size if zero2 else 0,
        )  # fmt: skip
        stages.append({
            "name": st.name, "subset": st.subset, "images": plan.images,
            "images_per_epoch": plan.images_per_epoch, "epochs": st.epochs,
            "steps_per_epoch": plan.steps_per_epoch, "steps": plan.total_steps,
            "warmup_steps": warmup_steps(st, plan.total_steps), "optimizer": st.optimizer,
            "method": st.method, "trained_parameters": trained_parameters(st),
            "steps_from": "latent cache" if cached else "catalog (the cache prepare will write)",
            "memory_gib_estimate": mem.to_json(),
        })  # fmt: skip
    side = recipe.buckets.resolution
    return {
        "run": recipe.train.run,
        "mixed_precision": recipe.train.mixed_precision,
        "gradient_checkpointing": recipe.train.gradient_checkpointing,
        "resolution": f"{side}x{side}",
        "processes": world_size,
        "scheme": "DeepSpeed ZeRO-2" if zero2 else ("DDP" if world_size > 1 else "one process"),
        "stages": stages,
        "total_steps": sum(s["steps"] for s in stages),
        "problems": [p.to_json() for p in problems],
        "note": "memory figures are estimates for the real SDXL at 1024x1024, per GPU",
    }
