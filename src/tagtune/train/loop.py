"""The training loop of one stage: read `train_stage` top to bottom.

Everything random in a step is drawn from generators keyed by (seed, stage, step, sample), the
stochastic rounding of bf16 weights from (seed, stage, step, chunk), and the data order from
(seed, stage, epoch), so a resumed run repeats exactly what the uninterrupted run would have
done. Validation draws from its own keyed generators (`tagtune.train.validation`), so
evaluating changes nothing a step sees.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tagtune.core.errors import TrainingError
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
from tagtune.train.loss import diffusion_loss, training_scheduler
from tagtune.train.monitor import Monitor
from tagtune.train.optim import (
    TRAINABLE,
    attach_fused_step,
    build_optimizer,
    lr_factor,
    set_lr,
    trainable_modules,
    warmup_steps,
)
from tagtune.train.rounding import LOW_PRECISION, RoundedSteps
from tagtune.train.runtime import Runtime
from tagtune.train.state import load_state, prune_states, rng_snapshot, save_state, state_meta
from tagtune.train.te_cache import Encoder
from tagtune.train.validation import Validator
from tagtune.train.zero import ZeroEngine, check_zero_state, start_engine


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
    on_step_end: Callable[[int], None] | None = None
    ema: WeightEMA | None = None
    prediction_type: str = "epsilon"
    notes: list[str] = field(default_factory=list)


@dataclass
class StageResult:
    """How a stage ended: steps done, last epoch's mean loss, the final state folder."""

    steps: int
    final_loss: float | None
    final_state: Path


def train_stage(job: StageJob) -> StageResult:
    """Train one stage to its last epoch (or from a resumable state), writing states as it goes."""
    rt, stage, cfg = job.runtime, job.stage, job.train
    monitor = job.monitor or Monitor(None, enabled=False)
    # Setup: modules with lr 0 are frozen and left out; each trained module is its own group
    modules = {n: getattr(job.components, n) for n in TRAINABLE}
    trained = trainable_modules(modules, stage)
    if not trained:
        raise TrainingError(f"stage {stage.name!r}: every learning rate is 0, nothing to train")
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(trained)
    optimizer = build_optimizer(trained, stage, rt.device)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    fused = fused_backward(cfg, stage, rt)
    # bf16 weights (outside ZeRO, which steps fp32 master weights) are stepped in fp32 and
    # rounded stochastically, so updates far below a bf16 ulp still move them
    low = not rt.deepspeed and any(p.dtype in LOW_PRECISION for p in params)
    rounding = RoundedSteps(optimizer, cfg.seed, job.stage_index) if low else None
    # Under a DeepSpeed launch, a ZeRO-2 engine shards gradients and optimizer state
    zero = (
        start_engine(trained, optimizer, stage, cfg.mixed_precision, rt) if rt.deepspeed else None
    )
    scaler = torch.amp.GradScaler("cuda") if cfg.mixed_precision == "fp16" else None
    noise_scheduler = training_scheduler(job.components.scheduler_config, job.prediction_type)
    encoder = Encoder(job.components, stage, job.encode_fn)
    per_epoch = steps_per_epoch(job.examples, stage, rt.world_size)
    total = per_epoch * stage.epochs
    warmup = warmup_steps(stage, total)
    kill_at = int(os.environ.get("TAGTUNE_KILL_AT_STEP", "0"))
    # Start at step 0, or where the resumed state left off (weights, optimizer, RNG, scaler)
    step, saved, final_loss, epoch_loss = 0, -1, None, []
    if job.resume_from is not None:
        zero_world = rt.world_size if zero is not None else None
        check_zero_state(state_meta(job.resume_from), zero_world, job.resume_from)
        meta = load_state(
            job.resume_from, trained, None if zero else (rounding or optimizer), rt.rank
        )
        check_resumable(meta, per_epoch, job.resume_from, job.stage, cfg.seed)
        if zero is not None:
            zero.load_shard(job.resume_from, rt.rank)
        step, saved, final_loss = meta["step"], meta["step"], meta["final_loss"]
        epoch_loss = list(meta["epoch_losses"])
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
    if job.ema is not None:  # averages from the weights now, or from the resumed state
        job.ema.start(trained, job.resume_from, zero=zero is not None)
    hooks = attach_fused_step(optimizer, stage.max_grad_norm, rounding) if fused else []
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
            lrs = set_lr(
                optimizer, lr_factor(stage.scheduler, step, total, warmup, stage.scheduler_cycles)
            )
            if rounding is not None:  # keys this step's rounding bits
                rounding.step_number = step
            # Forward and backward per micro-batch; losses are sums over the global batch
            loss = 0.0
            for m, batch in enumerate(steps[i]):
                key = (cfg.seed, job.stage_index, step, m)
                loss += forward_backward(
                    job, encoder, noise_scheduler, batch, key, len(steps[i]), scaler, fused, zero
                )
            # Sum gradients over processes; a NaN/inf loss stops before touching the weights
            loss = rt.sum_loss(loss) if zero else rt.sum_gradients(params, loss)
            if not math.isfinite(loss):
                raise TrainingError(
                    f"loss is {loss} at step {step + 1} of stage {stage.name!r}; the last good "
                    f"state is kept", field="loss", value=loss,
                )  # fmt: skip
            # Clip, step, clear (a fused backward pass has stepped every parameter already)
            if zero is not None:
                zero.step()
            elif not fused:
                optimizer_step(optimizer, params, scaler, stage.max_grad_norm, rounding)
            step += 1
            if job.ema is not None:
                job.ema.update(step)
            epoch_loss.append(loss)
            monitor.step(step, epoch + 1, loss, lrs, sum(len(b) for b in steps[i]))
            if step == kill_at:  # crash test hook: die like a power cut would
                os.kill(os.getpid(), signal.SIGKILL)
            if job.on_step_end is not None and rt.is_main:  # samples every N steps
                job.on_step_end(step)
            if job.validation is not None and job.validation.due_at_step(step):
                validated = validate(job, encoder, monitor, step, per_epoch)
            # Resumable state every N steps
            if cfg.save_every_n_steps and step % cfg.save_every_n_steps == 0:
                losses = {"final_loss": final_loss, "epoch_losses": epoch_loss}
                saved = checkpoint(job, trained, optimizer, scaler, step, per_epoch, losses, zero)
        # End of epoch: validation (before the state, so a resume never skips one), resumable
        # state, samples and optional export
        final_loss = sum(epoch_loss) / len(epoch_loss) if epoch_loss else final_loss
        epoch_loss = []
        last = epoch + 1 == stage.epochs
        due = job.validation is not None and job.validation.due_at_epoch(epoch + 1, stage.epochs)
        if due and validated != step:
            validated = validate(job, encoder, monitor, step, per_epoch)
        if saved != step and ((epoch + 1) % cfg.save_every_n_epochs == 0 or last):
            losses = {"final_loss": final_loss, "epoch_losses": []}
            saved = checkpoint(job, trained, optimizer, scaler, step, per_epoch, losses, zero)
        if job.on_epoch_end is not None and rt.is_main:
            job.on_epoch_end(epoch + 1, step)
    monitor.close()
    for h in hooks:
        h.remove()
    if zero is not None:  # the fp32 master weights go back into the modules
        zero.finish()
    for m in trained.values():
        m.requires_grad_(False).eval()
    return StageResult(step, final_loss, job.stage_dir / "states" / f"step-{step}")


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


def forward_backward(
    job: StageJob,
    encoder: Encoder,
    noise_scheduler: Any,
    batch: list[int],
    key: tuple[int, int, int, int],
    micro_batches: int,
    scaler: Any,
    fused: bool = False,
    zero: ZeroEngine | None = None,
) -> float:
    """Loss of this process's share of one global batch, backpropagated; returns its value.

    The loss is sum(per-sample loss) / (global batch size x micro-batches), so summing over
    processes and micro-batches gives the mean over the optimizer step's samples.
    """
    rt = job.runtime
    offset, share = rank_share(batch, rt.rank, rt.world_size)
    weight = 1.0
    if not share:
        if zero is None:
            return 0.0
        # ZeRO reduces gradients during backward, so every process must run one: a share
        # of zero weight keeps this process in step with the others
        offset, share, weight = 0, batch[:1], 0.0
    items = [job.examples[i] for i in share]
    records = [e.record for e in items]
    dtype = next(job.components.unet.parameters()).dtype  # fp32, or bf16 weights
    latents = job.latents.load(records).to(rt.device, dtype)
    time_ids = job.latents.time_ids(records).to(rt.device, dtype)
    draws = sample_draws(items, offset, tuple(latents.shape[1:]), job.stage, key)
    with rt.autocast():
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
    loss = per_sample.sum() * weight / (len(batch) * micro_batches)
    value = float(loss.detach())
    if fused and not math.isfinite(value):  # backward would step the weights: stop first
        raise TrainingError(
            f"loss is {value} at step {key[2] + 1} of stage {job.stage.name!r}; the last "
            "good state is kept", field="loss", value=value,
        )  # fmt: skip
    if zero is not None:
        zero.backward(loss, last_micro_batch=key[3] == micro_batches - 1)
    else:
        (scaler.scale(loss) if scaler is not None else loss).backward()
    return value


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    params: list[Any],
    scaler: Any,
    max_grad_norm: float,
    rounding: RoundedSteps | None = None,
) -> None:
    """Unscale (fp16), clip the global gradient norm, step, and clear the gradients.

    With bf16 weights `rounding` takes the step (in fp32, rounded stochastically).
    """
    stepper: Any = rounding if rounding is not None else optimizer
    if scaler is not None:
        scaler.unscale_(stepper)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if scaler is not None:
        scaler.step(stepper)
        scaler.update()
    else:
        stepper.step()
    optimizer.zero_grad(set_to_none=True)


def checkpoint(
    job: StageJob,
    trained: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    step: int,
    per_epoch: int,
    losses: dict[str, Any],
    zero: ZeroEngine | None = None,
) -> int:
    """Write a resumable state at `step` (main process), prune old ones, and wait for all.

    Under ZeRO-2 every process first writes its shard beside the state, and the weights are
    the whole fp32 master weights gathered from the shards.
    """
    rt = job.runtime
    rngs = rt.gather(rng_snapshot())
    states = job.stage_dir / "states"
    shards = states / f".step-{step}.shards"
    weights: dict[str, Any] = trained
    if zero is not None:
        weights = zero.full_weights(keep=rt.is_main)
        zero.save_shard(shards, rt.rank)
        rt.barrier()
    if job.ema is not None:
        weights = {**weights, **job.ema.state_tensors()}
    if rt.is_main:
        meta = {
            "stage": job.stage.name,
            "stage_index": job.stage_index,
            "step": step,
            "epoch": step // per_epoch,
            "batch_in_epoch": step % per_epoch,
            "steps_per_epoch": per_epoch,
            "world_size": rt.world_size,
            "zero_world_size": rt.world_size if zero is not None else None,
            "seed": job.train.seed,
            "settings": job.stage.model_dump(mode="json"),
            **losses,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": job.ema.meta() if job.ema is not None else None,
        }
        path = save_state(
            states, step, weights, None if zero else optimizer, meta, rngs,
            shards=shards if zero is not None else None,
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
    then = {**meta.get("settings", now), "seed": meta.get("seed", seed)}
    changed = [f"{k} {then.get(k)!r} -> {v!r}" for k, v in now.items() if then.get(k) != v]
    if changed:
        raise TrainingError(
            f"stage {stage.name!r} changed since the state was written: {', '.join(changed)}",
            file=path, hint="restore the settings, or remove the stage folder to start over",
        )  # fmt: skip


def fused_backward(cfg: TrainConfig, stage: StageConfig, rt: Runtime) -> bool:
    """Whether to step inside the backward pass; a TrainingError where that cannot work."""
    if not cfg.fused_backward:
        return False
    problems = [
        f"optimizer = {stage.optimizer!r}" if stage.optimizer != "adafactor" else "",
        f"gradient_accumulation = {stage.gradient_accumulation}"
        if stage.gradient_accumulation > 1
        else "",
        f"{rt.world_size} processes" if rt.world_size > 1 else "",
        "DeepSpeed" if rt.deepspeed else "",
        "mixed_precision = 'fp16'" if cfg.mixed_precision == "fp16" else "",
    ]
    if any(problems):
        raise TrainingError(
            f"fused_backward needs adafactor, gradient_accumulation 1, one process without "
            f"DeepSpeed and no fp16 loss scaling, but stage {stage.name!r} has {', '.join(p for p in problems if p)}",
            field="train.fused_backward", value=True,
        )  # fmt: skip
    return True


def enable_gradient_checkpointing(trained: dict[str, torch.nn.Module]) -> None:
    """Recompute activations in backward for every trained module (U-Net and encoders)."""
    for module in trained.values():
        if hasattr(module, "enable_gradient_checkpointing"):
            module.enable_gradient_checkpointing()
        elif hasattr(module, "gradient_checkpointing_enable"):
            module.gradient_checkpointing_enable()
