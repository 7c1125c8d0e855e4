"""Running the recipe's stages in order: each starts from the previous stage's final weights.

`run_training(ws)` runs every pending stage; `stage=` runs one. Completed stages are not run
again; their final states are loaded in order to rebuild the starting weights of the next.
The run's held-out images (`tagtune.train.validation`) are left out of every stage.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tagtune.core.catalog import check_subset, open_catalog
from tagtune.core.errors import TrainingError
from tagtune.core.subsets import stage_origin
from tagtune.core.workspace import Workspace
from tagtune.ingest.verdicts import catalog_is_current
from tagtune.models.hashes import file_hashes
from tagtune.models.prediction import components_prediction
from tagtune.models.recipe_model import resolve_prediction, vae_source_of
from tagtune.recipe.model import Recipe, StageConfig
from tagtune.recipe.workspace import workspace_recipe
from tagtune.train import records as rec
from tagtune.train.clean import prune_completed_stage
from tagtune.train.data import Example, steps_per_epoch
from tagtune.train.interrupt import interrupted
from tagtune.train.lora import apply_lora_state
from tagtune.train.monitor import Monitor
from tagtune.train.optim import TRAINABLE, warmup_steps
from tagtune.train.prediction_record import record_prediction
from tagtune.train.state import MARKER, clean_state_temps, latest_state, load_weights, state_meta
from tagtune.train.validation import (
    HeldOutImage,
    Validator,
    choose_held_out,
    held_out_notes,
    stage_validation,
)

SUMMARY_KEYS = ("name", "images", "steps", "seconds", "final_loss", "final_state", "validation")
"""What `TrainSummary.ran` (and `tagtune train --json`) says about each stage run."""


@dataclass
class TrainSummary:
    """What `run_training` did: stages run, skipped, messages, and where the run lives."""

    run_dir: Path
    ran: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary for the CLI."""
        return {
            "run_dir": str(self.run_dir),
            "ran": self.ran,
            "skipped": self.skipped,
            "notes": self.notes,
        }


def load_examples(
    ws: Workspace,
    stage: StageConfig,
    latents: Any,
    flip: bool = False,
    exclude: Collection[int] = (),
):
    """Examples of a stage's subset that have a caption and a cached latent; (examples, missing).

    Each carries its post's repeats (a kohya-style folder's N; 1 for Danbooru posts).

    Posts in `exclude` (the held-out images) are left out and not counted as missing.
    """

    with open_catalog(ws.catalog_path, read_only=True) as con:
        if not catalog_is_current(con, workspace_recipe(ws)):
            raise TrainingError(
                "the recipe's safety lists or legacy_ratings changed since the catalog was judged",
                file=ws.catalog_path,
                hint="run `tagtune caption WS` (it re-judges the posts and rebuilds the captions)",
            )
        stages = workspace_recipe(ws).train.stages
        where = check_subset(con, stage.subset, stage_origin(stages, stage, ws.recipe_path))
        rows = con.execute(
            "SELECT c.post_id, c.caption, c.tags, coalesce(posts.repeats, 1) FROM captions c "
            f"JOIN posts ON posts.id = c.post_id WHERE {where} ORDER BY c.post_id"
        ).fetchall()
    captions = {
        pid: (cap, tuple(tags or ()), rep) for pid, cap, tags, rep in rows if pid not in exclude
    }
    records = latents.records(list(captions), include_flipped=flip)
    examples = [
        Example(r.post_id, captions[r.post_id][0], captions[r.post_id][1], tuple(r.bucket), r,
                captions[r.post_id][2])
        for r in records
    ]  # fmt: skip
    missing = len(set(captions) - {e.post_id for e in examples})
    return examples, missing


def captions_sha256(examples: list[Example]) -> str:
    """sha256 of the stage's (post id, caption) lines: which captions this stage saw."""
    h = hashlib.sha256()
    for pid, cap in sorted({(e.post_id, e.caption) for e in examples}):
        h.update(f"{pid}\t{cap}\n".encode())
    return h.hexdigest()


def base_model_info(ws: Workspace, recipe: Recipe, components: Any) -> dict[str, str]:
    """Path and hashes of the base model (empty hashes for in-memory models)."""
    path = ws.resolve(recipe.model.base) if recipe.model.base else None
    if path is not None and path.is_file():
        h = file_hashes(path)
        return {"path": recipe.model.base, "sha256": h["sha256"], "autov2": h["autov2"]}
    return {
        "path": recipe.model.base or getattr(components, "source", ""),
        "sha256": "",
        "autov2": "",
    }


def load_base(ws: Workspace, recipe: Recipe) -> Any:
    """The recipe's model: base, `model.vae` baked in, tokenizers (see `load_recipe_model`)."""
    from tagtune.models.recipe_model import load_recipe_model

    return load_recipe_model(ws, recipe)


def open_latents(ws: Workspace, vae_hash: str) -> Any:
    """The workspace's latent cache for the VAE with this fingerprint."""
    from tagtune.prepare.encode import open_latent_cache

    return open_latent_cache(ws.cache_dir, vae_hash)


def place_modules(components: Any, device: torch.device, weight_dtype: str) -> None:
    """Frozen, eval-mode modules for training: U-Net and encoders on `device` in the weight
    dtype; the VAE stays where it is, in fp32 (latents are cached; samples borrow it)."""
    for name, module in components.modules().items():
        module.requires_grad_(False).eval()
        if name == "vae":
            continue
        module.to(device)
        if weight_dtype == "bf16":
            module.to(torch.bfloat16)


def final_state_path(ws: Workspace, entry: dict[str, Any]) -> Path:
    """The final state folder of a completed stage (its run.json entry).

    A completed stage whose final state is gone (or was never marked complete) is a
    TrainingError naming the stage and the folder: the stages after it, and an export, start
    from it, and the base weights in its place would silently lose its training.
    """
    rel = entry.get("final_state")
    path = ws.root / rel if rel else None
    if path is not None and (path / MARKER).is_file():
        return path
    if path is None:
        why = "has no final state"
    elif not path.exists():
        why = "its final state is missing"
    else:
        why = f"its final state is incomplete (no {MARKER} marker)"
    raise TrainingError(
        f"stage {entry.get('name')!r} is complete but {why}",
        file=path,
        hint="put the state folder back, or train again under a new run name (train.run)",
    )


def apply_stage_weights(components: Any, final_state: str | Path) -> None:
    """Load a finished stage's trained modules into the components (the stage chain).

    A LoRA stage's state holds only its adapters: they are merged into the weights.
    """
    settings = state_meta(Path(final_state)).get("settings", {})
    if settings.get("method") == "lora":
        apply_lora_state(components, StageConfig.model_validate(settings), Path(final_state))
        return
    for name in TRAINABLE:
        load_weights(Path(final_state), name, getattr(components, name))


def plan_stages(recipe: Recipe, stage: str | None) -> list[int]:
    """Indices of the stages to run: all, or up to and including the named one."""
    if stage is None:
        return list(range(len(recipe.train.stages)))
    names = [s.name for s in recipe.train.stages]
    recipe.stage(stage)  # RecipeError listing the names
    return [names.index(stage)]


@dataclass
class RunContext:
    """What the stages of one `run_training` call share: model, runtime, run.json, summary."""

    ws: Workspace
    recipe: Recipe
    runtime: Any
    components: Any
    vae: Any
    record: dict[str, Any]
    summary: TrainSummary
    progress: bool = True
    encode_fn: Any = None
    after_step: Callable[[int], None] | None = None
    held_out: list[HeldOutImage] | None = None  # chosen once, when the first stage runs
    only: str | None = None  # the stage asked for (`stage=`), for the resume command

    @property
    def run_dir(self) -> Path:
        """The run's folder (run.json, one folder per stage)."""
        return self.summary.run_dir

    def write_record(self) -> None:
        """Write run.json (main process only)."""
        if self.runtime.is_main:
            rec.write_run(self.run_dir, self.record)


def run_training(
    ws: Workspace,
    stage: str | None = None,
    resume: bool = False,
    components: Any = None,
    latents: Any = None,
    progress: bool = True,
    encode_fn: Any = None,
    after_step: Callable[[int], None] | None = None,
) -> TrainSummary:
    """Run the pending stages of the workspace's recipe (or one), resuming when asked.

    `components` and `latents` default to the recipe's model (`load_recipe_model`: base with
    `model.vae` baked in) and the workspace's latent cache for that VAE; tests pass a tiny
    model and in-memory latents. run.json's `vae` names the VAE the latents come from.
    `after_step(step)` runs after each optimizer step (the crash drills' kill switch).
    """
    recipe = workspace_recipe(ws)
    wanted = plan_stages(recipe, stage)
    check_completed_states(ws, recipe, wanted[-1])  # before any slow work
    ctx = open_run(ws, recipe, components, progress, encode_fn, after_step)
    ctx.only = stage
    for index, st in enumerate(recipe.train.stages[: wanted[-1] + 1]):
        entry = rec.find_stage(ctx.record, st.name)
        if entry and entry["status"] == "complete":
            apply_stage_weights(ctx.components, final_state_path(ws, entry))
            ctx.summary.skipped.append(st.name)
            if index in wanted and stage is not None:
                ctx.summary.notes.append(f"stage {st.name!r} is already complete")
            continue
        if index not in wanted:
            raise TrainingError(
                f"stage {stage!r} starts from stage {st.name!r}, which is not complete",
                hint=f"run `tagtune train {ws.root} --stage {st.name}` first",
            )
        resume_from = resume_point(ctx, st, resume)
        latents = latents if latents is not None else open_latents(ws, ctx.vae.fingerprint)
        examples = stage_examples(ctx, st, latents)
        entry = record_stage_start(ctx, st, examples, latents, entry, resume_from)
        job = stage_job(ctx, st, index, examples, latents, resume_from, entry)
        result = train_recorded(ctx, job, entry)
        record_stage_end(ctx, entry, result)
    return ctx.summary


def check_completed_states(ws: Workspace, recipe: Recipe, last: int) -> None:
    """Every stage up to index `last` that run.json calls complete still has its final state
    (`final_state_path`), checked before the model loads: a lost state is an error."""
    known = rec.read_run(ws.runs_dir / recipe.train.run)
    for st in recipe.train.stages[: last + 1]:
        entry = rec.find_stage(known, st.name) if known else None
        if entry and entry["status"] == "complete":
            final_state_path(ws, entry)


def open_run(
    ws: Workspace,
    recipe: Recipe,
    components: Any,
    progress: bool,
    encode_fn: Any,
    after_step: Callable[[int], None] | None,
) -> RunContext:
    """Start the processes' runtime, load and place the model, and read (or start) run.json."""
    from tagtune.train.runtime import make_runtime

    cfg = recipe.train
    runtime = make_runtime(cfg.mixed_precision)
    components = components if components is not None else load_base(ws, recipe)
    resolve_prediction(components, recipe, str(ws.recipe_path))  # as load_base does
    vae = vae_source_of(components)  # fingerprinted before anything moves or is cast
    place_modules(components, runtime.device, cfg.weight_dtype)
    run_dir = ws.runs_dir / cfg.run
    record = rec.read_run(run_dir) or rec.new_run(
        cfg.run, recipe, base_model_info(ws, recipe, components), vae.to_json()
    )
    record["vae"] = vae.to_json()  # the recipe's VAE now, also in a record from before
    record_prediction(record, components_prediction(components), run_dir)
    summary = TrainSummary(run_dir)
    return RunContext(
        ws, recipe, runtime, components, vae, record, summary, progress, encode_fn, after_step
    )


def resume_point(ctx: RunContext, st: StageConfig, resume: bool) -> Path | None:
    """The stage's newest complete state to resume from (None: start at step 0).

    Resumable states without `resume` are a TrainingError: they are never overwritten.
    """
    states = ctx.run_dir / st.name / "states"
    if ctx.runtime.is_main:  # what a killed save left (never a live writer's folder)
        clean_state_temps(states)
    resume_from, notes = latest_state(states)
    ctx.summary.notes += notes
    if resume_from is not None and not resume:
        raise TrainingError(
            f"stage {st.name!r} has resumable states ({resume_from.name})",
            file=states.parent, hint="continue with --resume, or remove the folder to start over",
        )  # fmt: skip
    if resume_from is not None:
        ctx.summary.notes.append(f"stage {st.name!r}: resuming from {resume_from.name}")
    elif resume:
        ctx.summary.notes.append(f"stage {st.name!r}: no resumable state, starting at step 0")
    return resume_from


def stage_examples(ctx: RunContext, st: StageConfig, latents: Any) -> list[Example]:
    """The stage's training examples, the run's held-out images left out (chosen here once)."""
    if ctx.held_out is None:
        ctx.held_out = choose_held_out(ctx.ws, ctx.recipe, latents)
        ctx.summary.notes += held_out_notes(ctx.recipe.validation, ctx.held_out)
    held_ids = {h.post_id for h in ctx.held_out}
    examples, missing = load_examples(ctx.ws, st, latents, ctx.recipe.buckets.flip, held_ids)
    if missing:
        ctx.summary.notes.append(
            f"stage {st.name!r}: {missing} captioned posts have no cached latent"
        )
    if not examples:
        raise TrainingError(
            f"stage {st.name!r}: no training images (subset {st.subset!r}"
            + (f", {len(held_ids)} held out for validation)" if held_ids else ")"),
            hint="run `tagtune caption` and `tagtune prepare` first, or hold out fewer "
            "images ([validation])",
        )  # fmt: skip
    return examples


def record_stage_start(
    ctx: RunContext,
    st: StageConfig,
    examples: list[Example],
    latents: Any,
    before: dict[str, Any] | None,
    resume_from: Path | None,
) -> dict[str, Any]:
    """The stage's run.json entry, marked running and written (a resume keeps what it had)."""
    per_epoch = steps_per_epoch(examples, st, ctx.runtime.world_size)
    resumed_step = state_meta(resume_from)["step"] if resume_from else None
    entry = {
        **rec.stage_record(
            st,
            images=len({e.post_id for e in examples}),
            steps_per_epoch=per_epoch,
            warmup_steps=warmup_steps(st, per_epoch * st.epochs),
            captions_sha256=captions_sha256(examples),
            latents_vae=getattr(latents, "vae_hash", ""),
        ),
        **(
            {k: before[k] for k in rec.KEPT_ON_RESUME if k in before}
            if before and resume_from
            else {}
        ),
        "validation": stage_validation(
            ctx.held_out, before if resume_from else None, resumed_step, ctx.run_dir / st.name
        ),
    }  # fmt: skip
    entry["status"] = "running"
    if resumed_step is not None:
        rec.add_resume(entry, resumed_step)
    if ctx.runtime.is_main:
        rec.put_stage(ctx.record, entry, [s.name for s in ctx.recipe.train.stages])
    ctx.write_record()
    return entry


def stage_job(
    ctx: RunContext,
    st: StageConfig,
    index: int,
    examples: list[Example],
    latents: Any,
    resume_from: Path | None,
    entry: dict[str, Any],
) -> Any:
    """The loop's `StageJob` for one stage: model, data, monitor and the run's callbacks."""
    from tagtune.train.loop import StageJob
    from tagtune.train.sampling import epoch_hook

    rt, recipe, stage_dir = ctx.runtime, ctx.recipe, ctx.run_dir / st.name
    prediction = components_prediction(ctx.components).prediction_type  # resolved in open_run
    return StageJob(
        components=ctx.components, stage=st, stage_index=index, train=recipe.train,
        examples=examples, latents=latents, stage_dir=stage_dir, runtime=rt,
        resume_from=resume_from,
        monitor=Monitor(stage_dir / "logs", enabled=rt.is_main, progress=ctx.progress),
        encode_fn=ctx.encode_fn, prediction_type=prediction,
        on_epoch_end=epoch_hook(ctx.ws, recipe, ctx.components, st, stage_dir),
        validation=Validator(
            ctx.held_out, recipe.validation, latents, rt, prediction
        ) if ctx.held_out else None,
        on_validation=lambda ev: record_evaluation(ctx.run_dir, ctx.record, entry, ev),
        after_step=ctx.after_step,
    )  # fmt: skip


def train_recorded(ctx: RunContext, job: Any, entry: dict[str, Any]) -> Any:
    """Train the stage; run.json counts its seconds at each state and marks a failure.

    Ctrl-C or SIGTERM (a KeyboardInterrupt) marks the stage `interrupted` and becomes a
    `TrainingInterrupted` naming the state kept and the resume command.
    """
    from tagtune.train.loop import train_stage

    start, before = time.perf_counter(), entry["seconds"]

    def state_saved(step: int) -> None:
        # run.json counts the time up to each state, so a run killed and resumed from
        # that state still reports the training time its weights took
        entry["seconds"] = round(before + time.perf_counter() - start, 3)
        rec.write_run(ctx.run_dir, ctx.record)

    job.on_state_saved = state_saved
    try:
        result = train_stage(job)
    except KeyboardInterrupt as exc:
        entry["status"] = "interrupted"  # seconds: up to the last state, where a resume starts
        ctx.write_record()
        states = job.stage_dir / "states"
        raise interrupted(ctx.ws.root, job.stage.name, states, ctx.only) from exc
    except BaseException:
        entry["status"] = "failed"  # seconds: up to the last state, where a resume starts
        ctx.write_record()
        raise
    finally:
        job.monitor.close()
    entry.update(seconds=round(before + time.perf_counter() - start, 3))
    return result


def record_stage_end(ctx: RunContext, entry: dict[str, Any], result: Any) -> None:
    """Mark the stage complete in run.json (final loss and state) and in the summary; then
    remove its other states (`train.keep_states_of_completed_stages = "final"`)."""
    entry.update(
        status="complete",
        finished_at=rec.now(),
        final_loss=result.final_loss,
        final_state=result.final_state.relative_to(ctx.ws.root).as_posix(),
    )
    ctx.write_record()
    if ctx.runtime.is_main and ctx.recipe.train.keep_states_of_completed_stages == "final":
        prune_completed_stage(result.final_state.parent, result.final_state)
    ctx.summary.ran.append({k: entry[k] for k in SUMMARY_KEYS})


def record_evaluation(
    run_dir: Path, record: dict[str, Any], entry: dict[str, Any], evaluation: dict[str, Any]
) -> None:
    """Add one validation to the stage's run.json entry and write run.json (main process)."""
    entry["validation"]["evaluations"].append(evaluation)
    rec.write_run(run_dir, record)
