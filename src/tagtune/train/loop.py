"""The training loop of one stage: read `train_stage` top to bottom.

Everything random in a step is drawn from generators keyed by (seed, stage, step, sample), the
stochastic rounding of bf16 weights from (seed, stage, step, chunk), and the data order from
(seed, stage, epoch), so a resumed run repeats exactly what the uninterrupted run would have
done. Validation draws from its own keyed generators (`tagtune.train.validation`), so
evaluating changes nothing a step sees.

How the weights are updated (one process, several with DDP, Adafactor fused into backward,
DeepSpeed ZeRO-2; fp16 loss scaling; stochastic rounding of bf16 weights) is the engine's
business (`tagtune.train.engines`): the loop reads the same for each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tagtune.core.errors import TrainingError
from tagtune.core.results import Result
from tagtune.recipe.model import StageConfig, TrainConfig
from tagtune.train.data import (
    Example,
    LatentSource,
    epoch_batches,
    group_steps,
    rank_share,
    sample_draws,
    steps_per_epoch,
)
from tagtune.train.ema import WeightEMA, ema_applied
from tagtune.train.engines import Engine, open_engine
from tagtune.train.lora import add_adapters, dropout_draws, merge_adapters
from tagtune.train.loss import diffusion_loss, training_scheduler
from tagtune.train.monitor import Monitor
from tagtune.train.optim import TRAINABLE, lr_factor, trainable_modules, warmup_steps
from tagtune.train.runtime import Runtime
from tagtune.train.state import prune_states, rng_snapshot, save_state
from tagtune.train.te_cache import Encoder
from tagtune.train.validation import Validator


@dataclass
class StageJob:
    """Everything one stage needs: model, data, settings, where to write, where to resume from."""

    components: Any
    stage: StageConfig
    stage_index: int
    train: TrainConfig
    examples: list[Example]
    latents: LatentSource
    stage_dir: Path
    runtime: Runtime
    resume_from: Path | None = None
    monitor: Monitor | None = None
    encode_fn: Callable | None = None
    on_epoch_end: Callable[[int, int], None] | None = None
    on_state_saved: Callable[[int], None] | None = None
    validation: Validator | None = None
    on_validation: Callable[[dict[str, Any]], None] | None = None
    after_step: Callable[[int], None] | None = None
    ema: WeightEMA | None = None
    prediction_type: str = "epsilon"
    notes: list[str] = field(default_factory=list)


@dataclass
class StageResult(Result):
    """How a stage ended: steps done, last epoch's mean loss, the final state folder."""

    steps: int
    final_loss: float | None
    final_state: Path


def train_stage(job: StageJob) -> StageResult:
    """Train one stage to its last epoch (or from a resumable state), writing states as it goes.

    However the stage ends, also when it raises, the engine is closed (hooks removed, fp32
    master weights back in the modules), the monitor closed, and the trained modules are
    frozen and in eval mode again.
    """
    monitor = job.monitor or Monitor(None, enabled=False)
    # Modules with lr 0 are frozen and left out; each trained module is its own group (a LoRA
    # stage first puts its adapters in, and then only they train)
    add_adapters(job.components, job.stage, job.train.seed, job.stage_index, job.runtime.deepspeed)
    trained = trainable_modules({n: getattr(job.components, n) for n in TRAINABLE}, job.stage)
    try:
        if not trained:
            raise TrainingError(
                f"stage {job.stage.name!r}: every learning rate is 0, nothing to train"
            )
        if job.train.gradient_checkpointing:
            enable_gradient_checkpointing(trained)
        with open_engine(trained, job.stage, job.train, job.runtime, job.stage_index) as engine:
            result = run_steps(job, engine, monitor)
        merge_adapters(job.components)  # the next stage starts from the base + this LoRA
        return result
    finally:
        monitor.close()
        for module in trained.values():
            module.requires_grad_(False).eval()


def run_steps(job: StageJob, engine: Engine, monitor: Monitor) -> StageResult:
    """The stage's epochs and steps, from step 0 or the resumed state; `engine` updates."""
    rt, stage, cfg = job.runtime, job.stage, job.train
    noise_scheduler = training_scheduler(job.components.scheduler_config, job.prediction_type)
    encoder = Encoder(job.components, stage, job.encode_fn)
    per_epoch = steps_per_epoch(job.examples, stage, rt.world_size)
    total = per_epoch * stage.epochs
    warmup = warmup_steps(stage, total)
    # Start at step 0, or where the resumed state left off (weights, optimizer, RNG, scaler)
    step, saved, final_loss, epoch_loss = 0, -1, None, []
    if job.resume_from is not None:
        meta = engine.load(job.resume_from)
        check_resumable(meta, per_epoch, job.resume_from, job.stage, cfg.seed)
        step, saved, final_loss = meta["step"], meta["step"], meta["final_loss"]
        epoch_loss = list(meta["epoch_losses"])
    if job.ema is not None:  # averages from the weights now, or from the resumed state
        job.ema.start(engine.trained, job.resume_from, zero=engine.zero_world_size is not None)
    monitor.start(stage.name, total, step)
    # Validation loss and conditioning gap before the first step (not again on resume)
    validated = validate(job, encoder, monitor, step, per_epoch) if step == 0 else -1
    for epoch in range(step // per_epoch, stage.epochs):
        batches = epoch_batches(
            job.examples, stage.batch_size * rt.world_size, stage.repeats,
            cfg.seed, job.stage_index, epoch,
        )  # fmt: skip
        steps = group_steps(batches, stage.gradient_accumulation)
        for i in range(step - epoch * per_epoch, per_epoch):
            # Learning rate of this step, from the closed-form schedule
            factor = lr_factor(stage.scheduler, step, total, warmup, stage.scheduler_cycles)
            lrs = engine.begin_step(step, factor)
            # Forward and backward per micro-batch; each loss is this process's share of the
            # step's mean, summed over processes so that all stop on a NaN/inf loss, before
            # a backward pass could touch the weights
            loss = 0.0
            for m, batch in enumerate(steps[i]):
                last = m == len(steps[i]) - 1
                key = (cfg.seed, job.stage_index, step, m)
                compute = partial(
                    forward_loss, job, encoder, noise_scheduler, batch, key, len(steps[i])
                )
                micro_loss = engine.forward(compute, last)
                value = rt.sum_loss(float(micro_loss.detach()))
                check_finite(value, step + 1, stage)
                engine.backward(micro_loss, last)
                loss += value
            # Clip, step, clear (nothing left to do where backward stepped)
            engine.step()
            step += 1
            if job.ema is not None:
                job.ema.update(step)
            epoch_loss.append(loss)
            monitor.step(step, epoch + 1, loss, lrs, sum(len(b) for b in steps[i]))
            if job.after_step is not None:  # e.g. the crash drills' kill switch
                job.after_step(step)
            if job.validation is not None and job.validation.due_at_step(step):
                validated = validate(job, encoder, monitor, step, per_epoch)
            # Resumable state every N steps
            if cfg.save_every_n_steps and step % cfg.save_every_n_steps == 0:
                losses = {"final_loss": final_loss, "epoch_losses": epoch_loss}
                saved = checkpoint(job, engine, step, per_epoch, losses)
        # End of epoch: validation (before the state, so a resume never skips one), resumable
        # state, samples and optional export
        final_loss = sum(epoch_loss) / len(epoch_loss) if epoch_loss else final_loss
        epoch_loss = []
        last_epoch = epoch + 1 == stage.epochs
        due = job.validation is not None and job.validation.due_at_epoch(epoch + 1, stage.epochs)
        if due and validated != step:
            validated = validate(job, encoder, monitor, step, per_epoch)
        if saved != step and ((epoch + 1) % cfg.save_every_n_epochs == 0 or last_epoch):
            losses = {"final_loss": final_loss, "epoch_losses": []}
            saved = checkpoint(job, engine, step, per_epoch, losses)
        if job.on_epoch_end is not None and rt.is_main:
            job.on_epoch_end(epoch + 1, step)
    return StageResult(step, final_loss, job.stage_dir / "states" / f"step-{step}")


def check_finite(loss: float, step: int, stage: StageConfig) -> None:
    """A NaN or inf loss stops the stage (a TrainingError) before it reaches the weights."""
    if not math.isfinite(loss):
        raise TrainingError(
            f"loss is {loss} at step {step} of stage {stage.name!r}; the last good state is kept",
            field="loss", value=loss,
        )  # fmt: skip


def validate(job: StageJob, encoder: Encoder, monitor: Monitor, step: int, per_epoch: int) -> int:
    """Evaluate the held-out images now (no-op without any); log and record it; return `step`."""
    if job.validation is None:
        return step
    epoch = round(step / per_epoch, 4)
    with ema_applied(job.ema):  # the averaged weights, when EMA is on
        evaluation = job.validation.evaluate(job.components, encoder, step, epoch)
    monitor.validation(evaluation)
    if job.on_validation is not None and job.runtime.is_main:
        job.on_validation(evaluation)
    return step


def forward_loss(
    job: StageJob,
    encoder: Encoder,
    noise_scheduler: Any,
    batch: list[int],
    key: tuple[int, int, int, int],
    micro_batches: int,
) -> torch.Tensor:
    """Loss of this process's share of one global batch (a scalar tensor, not yet backward).

    The loss is sum(per-sample loss) / (global batch size x micro-batches), so summing over
    processes and micro-batches gives the mean over the optimizer step's samples. A process
    whose share is empty (a small last batch) computes a zero-weight loss of one image: its
    backward pass still joins the gradient reduction the other processes run.
    """
    rt = job.runtime
    offset, share = rank_share(batch, rt.rank, rt.world_size)
    weight = 1.0
    if not share:
        offset, share, weight = 0, batch[:1], 0.0
    items = [job.examples[i] for i in share]
    records = [e.record for e in items]
    dtype = next(job.components.unet.parameters()).dtype  # fp32, or bf16 weights
    latents = job.latents.load(records).to(rt.device, dtype)
    time_ids = job.latents.time_ids(records).to(rt.device, dtype)
    draws = sample_draws(items, offset, tuple(latents.shape[1:]), job.stage, key)
    with rt.autocast(), dropout_draws(job.stage, key, rt.rank, rt.device):
        embeds, pooled = encoder(draws.captions)
        per_sample = diffusion_loss(
            job.components.unet,
            noise_scheduler,
            latents,
            draws.noise.to(rt.device, dtype),
            draws.timesteps.to(rt.device),
            embeds,
            pooled,
            time_ids,
            job.stage.min_snr_gamma,
        )
    return per_sample.sum() * weight / (len(batch) * micro_batches)


def checkpoint(
    job: StageJob, engine: Engine, step: int, per_epoch: int, losses: dict[str, Any]
) -> int:
    """Write a resumable state at `step` (main process), prune old ones, and wait for all.

    The engine says what the state holds: under ZeRO-2 every process first writes its shard
    beside the state, and the weights are the whole fp32 master weights gathered from them.
    """
    rt = job.runtime
    rngs = rt.gather(rng_snapshot())
    states = job.stage_dir / "states"
    parts = engine.state(states / f".step-{step}.shards")
    ema = job.ema.state_tensors() if job.ema is not None else {}
    if rt.is_main:
        meta = {
            "stage": job.stage.name,
            "stage_index": job.stage_index,
            "step": step,
            "epoch": step // per_epoch,
            "batch_in_epoch": step % per_epoch,
            "steps_per_epoch": per_epoch,
            "world_size": rt.world_size,
            "seed": job.train.seed,
            "settings": job.stage.model_dump(mode="json"),
            **losses,
            **parts.meta,
            "ema": job.ema.meta() if job.ema is not None else None,
        }
        path = save_state(
            states, step, {**parts.weights, **ema}, parts.optimizer, meta, rngs,
            shards=parts.shards,
        )  # fmt: skip
        prune_states(states, job.train.keep_last, protect=path)
    rt.barrier()
    if job.on_state_saved is not None and rt.is_main:
        job.on_state_saved(step)
    return step


def check_resumable(
    meta: dict[str, Any], per_epoch: int, path: Path, stage: StageConfig, seed: int
) -> None:
    """A state only continues the run that wrote it: same stage settings, seed and steps per
    epoch, so the resumed run ends where the uninterrupted one would have."""
    if meta["steps_per_epoch"] != per_epoch:
        raise TrainingError(
            f"the state was written with {meta['steps_per_epoch']} steps per epoch, the recipe "
            f"and data now give {per_epoch} (batch size, repeats, subset or processes changed)",
            file=path, hint="restore the settings, or remove the stage folder to start over",
        )  # fmt: skip
    now = {**stage.model_dump(mode="json"), "seed": seed}
    defaults = {k: f.default for k, f in StageConfig.model_fields.items()}  # keys added since
    then = {**defaults, **meta.get("settings", now), "seed": meta.get("seed", seed)}
    changed = [f"{k} {then.get(k)!r} -> {v!r}" for k, v in now.items() if then.get(k) != v]
    if changed:
        raise TrainingError(
            f"stage {stage.name!r} changed since the state was written: {', '.join(changed)}",
            file=path, hint="restore the settings, or remove the stage folder to start over",
        )  # fmt: skip


def enable_gradient_checkpointing(trained: dict[str, torch.nn.Module]) -> None:
    """Recompute activations in backward for every trained module (U-Net and encoders)."""
    for module in trained.values():
        if hasattr(module, "enable_gradient_checkpointing"):
            module.enable_gradient_checkpointing()
        elif hasattr(module, "gradient_checkpointing_enable"):
            module.gradient_checkpointing_enable()
