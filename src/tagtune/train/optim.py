"""Optimizers, parameter groups and learning-rate schedules.

Optimizers are a table (name -> constructor). Each trainable module (U-Net, text encoder 1,
text encoder 2) is one parameter group with its own learning rate; a module with lr 0 is frozen:
requires_grad is off and it is not in the optimizer, so it stays bit-identical.

Schedules are closed formulas of the optimizer step (the same ones diffusers' `get_scheduler`
uses), applied by the loop before every step: nothing but the step counter needs saving.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from tagtune.core.errors import DependencyError
from tagtune.recipe.model import StageConfig

TRAINABLE = ("unet", "text_encoder", "text_encoder_2")


def module_lrs(stage: StageConfig) -> dict[str, float]:
    """Learning rate per trainable module name for a stage."""
    return {
        "unet": stage.lr_unet,
        "text_encoder": stage.lr_text_encoder,
        "text_encoder_2": stage.lr_text_encoder_2,
    }


def trainable_modules(modules: dict[str, torch.nn.Module], stage: StageConfig) -> dict[str, Any]:
    """Set requires_grad and train/eval mode per module; return the modules that train (lr > 0)."""
    trained = {}
    for name, lr in module_lrs(stage).items():
        module = modules[name]
        module.requires_grad_(lr > 0)
        module.train(lr > 0)
        if lr > 0:
            trained[name] = module
    return trained


def param_groups(trained: dict[str, torch.nn.Module], stage: StageConfig) -> list[dict[str, Any]]:
    """One parameter group per trained module, named, with its base lr (used by the schedule)."""
    lrs = module_lrs(stage)
    return [
        {"params": list(m.parameters()), "lr": lrs[n], "base_lr": lrs[n], "name": n}
        for n, m in trained.items()
    ]


def _adamw(groups: list[dict[str, Any]], stage: StageConfig, device: torch.device):
    return torch.optim.AdamW(groups, weight_decay=stage.weight_decay, foreach=False)


def _adamw8bit(groups: list[dict[str, Any]], stage: StageConfig, device: torch.device):
    if device.type != "cuda":
        raise DependencyError(
            "adamw8bit needs a CUDA GPU (bitsandbytes)",
            field="optimizer",
            value="adamw8bit",
            allowed="adamw, adafactor on this machine",
        )
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise DependencyError(
            "adamw8bit needs bitsandbytes, which is not installed",
            field="optimizer",
            value="adamw8bit",
            hint="pip install 'tagtune[gpu]' (or bitsandbytes)",
        ) from None
    return bnb.optim.AdamW8bit(groups, weight_decay=stage.weight_decay)


def _adafactor(groups: list[dict[str, Any]], stage: StageConfig, device: torch.device):
    from transformers.optimization import Adafactor

    return Adafactor(
        groups,
        lr=groups[0]["lr"] if groups else 1e-6,
        relative_step=False,
        scale_parameter=False,
        warmup_init=False,
        weight_decay=stage.weight_decay,
    )


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adamw8bit": _adamw8bit,
    "adafactor": _adafactor,
}


def build_optimizer(
    trained: dict[str, torch.nn.Module], stage: StageConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The stage's optimizer over the trained modules, one group per module."""
    return OPTIMIZERS[stage.optimizer](param_groups(trained, stage), stage, device)


# --- learning-rate schedules --------------------------------------------------------------


def warmup_steps(stage: StageConfig, total_steps: int) -> int:
    """Warm-up length in optimizer steps, from warmup_steps or warmup_ratio of the stage."""
    if stage.warmup_steps:
        return stage.warmup_steps
    return int(round(stage.warmup_ratio * total_steps))


def lr_factor(schedule: str, step: int, total: int, warmup: int, cycles: int = 1) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based), as diffusers defines it.

    constant ignores warm-up; the others rise linearly over `warmup` steps, then
    linear: falls to 0 at `total`; cosine: half a cosine to 0; cosine_with_restarts:
    `cycles` hard-restarted half cosines.
    """
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if schedule == "cosine_with_restarts":
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))
    raise ValueError(f"unknown schedule {schedule!r}")


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> dict[str, float]:
    """Set every group's lr to base_lr * factor; return lr per group name (for logs)."""
    lrs = {}
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
        lrs[group["name"]] = group["lr"]
    return lrs


# --- fused backward pass (Adafactor) ------------------------------------------------------


def attach_fused_step(
    optimizer: torch.optim.Optimizer, max_grad_norm: float, rounding: Any = None
) -> list[Any]:
    """Step each parameter as soon as its gradient is ready, then drop the gradient.

    The optimizer runs on a one-parameter view of the parameter's group (same state, same
    lr), so whole-model gradients are never held at once. Clipping is per tensor here. With
    bf16 weights, `rounding` (a `tagtune.train.rounding.RoundedSteps`) takes the step in fp32
    and rounds it stochastically into the weight. Returns the hook handles (call `.remove()`
    on each when done).
    """
    handles = []
    index = 0
    for group in optimizer.param_groups:
        for p in group["params"]:

            def hook(param: torch.Tensor, group: dict = group, index: int = index) -> None:
                if max_grad_norm:
                    torch.nn.utils.clip_grad_norm_([param], max_grad_norm)
                if rounding is not None:
                    rounding.step_parameter(group, param, index)
                else:
                    groups = optimizer.param_groups
                    optimizer.param_groups = [{**group, "params": [param]}]
                    try:
                        optimizer.step()
                    finally:
                        optimizer.param_groups = groups
                param.grad = None

            handles.append(p.register_post_accumulate_grad_hook(hook))
            index += 1
    return handles
