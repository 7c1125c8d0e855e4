"""A rough GPU memory estimate for a stage at 1024x1024, for `tagtune train --dry-run`.

It counts the parameters of the real SDXL 1.0 (not the model on disk), bytes per parameter
for weights, gradients and optimizer states by dtype and optimizer, and a per-image activation
figure with or without gradient checkpointing. It is an estimate, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

from tagtune.recipe import StageConfig, TrainConfig

GIB = 1024**3
PARAMS = {"unet": 2_567_000_000, "text_encoder": 123_000_000, "text_encoder_2": 695_000_000}
VAE_PARAMS = 84_000_000
# optimizer state bytes per trained parameter
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw8bit": 2.0, "adafactor": 0.1}  # fp32 weights
# activations per 1024x1024 image in 16-bit (doubled in fp32), U-Net + encoders
ACTIVATION_GIB = {True: 1.2, False: 9.0}
CUDA_CONTEXT_GIB = 0.6


@dataclass
class MemoryEstimate:
    """GiB per part of the estimate for one process."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        """Sum of the parts."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def to_json(self) -> dict[str, float]:
        """Rounded figures for printing."""
        parts = ("weights", "gradients", "optimizer", "activations", "overhead", "total")
        return {k: round(getattr(self, k), 2) for k in parts}


def estimate_memory(
    stage: StageConfig, cfg: TrainConfig, sampling: bool = False, zero_processes: int = 0
) -> MemoryEstimate:
    """Estimate GPU memory (GiB) to train `stage` at 1024x1024 with the recipe's options.

    Weights and gradients take 4 bytes per parameter, 2 with `weight_dtype = "bf16"`; AdamW
    keeps its two moments in the weights' dtype (8 or 4 bytes), 8-bit AdamW 2 bytes. The VAE is
    on the GPU only when sampling. With `zero_processes` N (DeepSpeed ZeRO-2) each process
    holds the trained weights in bf16 (or fp32 without mixed precision), 1/N of the fp32
    master weights, gradients and optimizer states, and DeepSpeed's reduce buckets.
    """
    if zero_processes:
        return _zero2_memory(stage, cfg, sampling, zero_processes)
    lrs = {"unet": stage.lr_unet, "text_encoder": stage.lr_text_encoder,
           "text_encoder_2": stage.lr_text_encoder_2}  # fmt: skip
    trained = sum(n for k, n in PARAMS.items() if lrs[k] > 0)
    frozen = sum(n for k, n in PARAMS.items() if lrs[k] == 0) + (VAE_PARAMS if sampling else 0)
    act_bytes = 1.0 if cfg.mixed_precision != "no" else 2.0
    activations = ACTIVATION_GIB[cfg.gradient_checkpointing] * act_bytes * stage.batch_size
    if stage.lr_unet == 0:
        activations *= 0.1
    per_weight = 2 if cfg.weight_dtype == "bf16" else 4
    adam_scale = 0.5 if (stage.optimizer == "adamw" and per_weight == 2) else 1.0
    return MemoryEstimate(
        weights=(trained + frozen) * per_weight / GIB,
        gradients=trained * per_weight / GIB,
        optimizer=trained * OPTIMIZER_BYTES[stage.optimizer] * adam_scale / GIB,
        activations=activations,
        overhead=CUDA_CONTEXT_GIB,
    )


ZERO_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default reduce_bucket_size


def _zero2_memory(
    stage: StageConfig, cfg: TrainConfig, sampling: bool, processes: int
) -> MemoryEstimate:
    base = estimate_memory(stage, cfg, sampling)
    lrs = {"unet": stage.lr_unet, "text_encoder": stage.lr_text_encoder,
           "text_encoder_2": stage.lr_text_encoder_2}  # fmt: skip
    trained = sum(n for k, n in PARAMS.items() if lrs[k] > 0)
    frozen = sum(n for k, n in PARAMS.items() if lrs[k] == 0) + (VAE_PARAMS if sampling else 0)
    low = 2 if cfg.mixed_precision == "bf16" else 4
    frozen_bytes = 2 if cfg.weight_dtype == "bf16" else 4
    return MemoryEstimate(
        weights=(trained * low + frozen * frozen_bytes + trained * 4 / processes) / GIB,
        gradients=(trained * low / processes + min(trained, ZERO_BUCKET_ELEMENTS) * low) / GIB,
        optimizer=trained * OPTIMIZER_BYTES[stage.optimizer] / processes / GIB,
        activations=base.activations,
        overhead=base.overhead,
    )
