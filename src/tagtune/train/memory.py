"""A GPU memory estimate for a stage at 1024x1024, for `tagtune train --dry-run`.

It models what the training loop holds on one GPU for the real SDXL 1.0 (parameter counts
from the configs in `tagtune/configs/sdxl-base`, not the model on disk). Its terms:

- weights: the U-Net and both text encoders, trained or frozen (frozen encoders still encode
  every caption), in the weight dtype (bf16: 2 bytes, fp32: 4). The VAE stays on the CPU
  (latents are cached) and comes to the GPU in fp32 only while sampling.
- gradients: one per trained weight, in the weight dtype. A fused backward pass holds only
  the gradient of the tensor being stepped.
- optimizer: AdamW keeps two fp32 moments (8 bytes per trained weight; fp32 with bf16 weights
  too, see `tagtune.train.rounding`); 8-bit AdamW two 8-bit moments plus an fp32 absmax per
  256-value block, tensors under 4,096 values in fp32 (2.03 bytes); Adafactor its factored
  second moment (exact element counts of SDXL's shapes, fp32).
- activations: what a forward + backward pass at 1024x1024 with 225-token captions holds
  beyond the weights and gradients at its peak, per image, measured in bf16 by
  `benchmarks/activation_memory.py` (torch's MemTracker on real-size modules, no GPU).
  With gradient checkpointing the peak falls at the end of the U-Net's backward pass: U-Net
  0.39 GiB per image, plus 0.20 when the text encoders train (their activations wait for
  their own backward pass, whose gradients come after the peak). Without it the peak falls
  before any gradient exists: U-Net 6.44 GiB per image, plus 0.42 with trained encoders.
  Doubled in fp32 (no mixed precision with fp32 weights).
- step buffers: bf16 weights are stepped on fp32 copies of a chunk of weights and gradients
  plus their random bits (12 bytes per value of the larger of a chunk and the largest
  trained tensor), after the backward pass, beside every gradient. AdamW on fp32 weights
  makes one temporary of the largest tensor.
- peak: weights + optimizer + overhead + the larger of (gradients at the activation peak +
  activations) and (all gradients + step buffers).
- ema: with `ema_decay` and `ema_device = "gpu"`, an fp32 average of every trained weight
  (4 bytes each; none on the CPU). Sampling and validation with EMA keep the weights they
  replace on the CPU, so they add nothing.
- overhead: the CUDA context and library workspaces, outside torch's allocator (what
  `torch.cuda.max_memory_allocated` does not see).

A LoRA stage (`tagtune.train.lora_memory`): every weight frozen, plus the LoRA parameters,
their gradients and optimizer state in place of the trained modules'; activations as above.

It is an estimate, not a measurement: `benchmarks/gpu_check.py` measures one real-size step
on a GPU against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tagtune.recipe.lora import stage_lora
from tagtune.recipe.model import StageConfig, TrainConfig
from tagtune.train.ema import stage_decay
from tagtune.train.lora_memory import largest_lora_tensor, lora_optimizer_bytes, lora_params

GIB = 1024**3
PARAMS = {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}
VAE_PARAMS = 83_653_863
LARGEST_TENSOR = {"unet": 29_491_200, "text_encoder": 37_945_344, "text_encoder_2": 63_242_240}
ADAFACTOR_STATE = {"unet": 244_330_500, "text_encoder": 338_253, "text_encoder_2": 1_326_925}
# optimizer state bytes per trained parameter (Adafactor: per module, from ADAFACTOR_STATE)
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw8bit": 2.034}
# activations per 1024x1024 image in bf16, by gradient checkpointing (activation_memory.py)
UNET_ACTIVATION_GIB = {True: 0.39, False: 6.44}
TEXT_ACTIVATION_GIB = {True: 0.20, False: 0.42}
STEP_CHUNK = 1 << 24  # tagtune.train.rounding.CHUNK_ELEMENTS
CUDA_CONTEXT_GIB = 0.6


@dataclass
class MemoryEstimate:
    """GiB per part of the estimate for one process; `total` is the peak (module docstring)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float
    step_buffers: float = 0.0
    gradients_at_peak: float | None = None  # None: every gradient (a conservative peak)
    ema: float = 0.0

    @property
    def total(self) -> float:
        """Peak: persistent parts plus the larger of the backward pass's and the step's peak."""
        at_peak = self.gradients if self.gradients_at_peak is None else self.gradients_at_peak
        transient = max(at_peak + self.activations, self.gradients + self.step_buffers)
        return self.weights + self.optimizer + self.ema + transient + self.overhead

    def to_json(self) -> dict[str, float]:
        """Rounded figures for printing."""
        parts = (
            "weights", "gradients", "optimizer", "ema", "activations", "step_buffers", "overhead"
        )  # fmt: skip
        out = {k: round(getattr(self, k), 2) for k in parts}
        if self.gradients_at_peak is not None:
            out["gradients_at_peak"] = round(self.gradients_at_peak, 2)
        return {**out, "total": round(self.total, 2)}


def _lrs(stage: StageConfig) -> dict[str, float]:
    return {"unet": stage.lr_unet, "text_encoder": stage.lr_text_encoder,
            "text_encoder_2": stage.lr_text_encoder_2}  # fmt: skip


def trained_parameters(stage: StageConfig) -> int:
    """Parameters (elements) the stage trains in the real SDXL: whole modules, or its LoRA."""
    trained = [m for m, lr in _lrs(stage).items() if lr > 0]
    lora = stage_lora(stage)
    return lora_params(lora, trained) if lora else sum(PARAMS[m] for m in trained)


def optimizer_bytes(stage: StageConfig, trained: list[str]) -> float:
    """Bytes of optimizer state for the trained modules."""
    if stage.optimizer == "adafactor":
        return sum(ADAFACTOR_STATE[m] * 4.0 for m in trained)
    return sum(PARAMS[m] for m in trained) * OPTIMIZER_BYTES[stage.optimizer]


def activation_gib(stage: StageConfig, cfg: TrainConfig) -> float:
    """Activations of one step's forward + backward (GiB), per process."""
    per_image = UNET_ACTIVATION_GIB[cfg.gradient_checkpointing]
    if stage.trains_text_encoders:
        per_image += TEXT_ACTIVATION_GIB[cfg.gradient_checkpointing]
    fp32 = cfg.mixed_precision == "no" and cfg.weight_dtype == "fp32"
    return per_image * stage.batch_size * (2.0 if fp32 else 1.0)


def estimate_memory(
    stage: StageConfig, cfg: TrainConfig, sampling: bool = False, zero_processes: int = 0
) -> MemoryEstimate:
    """Estimate GPU memory (GiB) to train `stage` at 1024x1024 with the recipe's options.

    See the module docstring for each term (a LoRA stage trains only its adapters). With `zero_processes` N (DeepSpeed ZeRO-2) each
    process holds the trained weights in bf16 (or fp32 without mixed precision), 1/N of the
    fp32 master weights, gradients and optimizer states, and DeepSpeed's reduce buckets.
    """
    lora = stage_lora(stage)
    if zero_processes and lora is None:  # a LoRA stage never runs under DeepSpeed
        return _zero2_memory(stage, cfg, sampling, zero_processes)
    lrs = _lrs(stage)
    trained = [m for m, lr in lrs.items() if lr > 0]
    per_weight = 2 if cfg.weight_dtype == "bf16" else 4
    # what trains: every weight of the trained modules, or a LoRA stage's adapters
    count = {m: lora_params(lora, [m]) if lora else PARAMS[m] for m in trained}
    largest = (
        largest_lora_tensor(lora, trained)
        if lora
        else max((LARGEST_TENSOR[m] for m in trained), default=0)
    )
    fused = cfg.fused_backward and stage.optimizer == "adafactor"
    gradients = largest if fused else sum(count.values())
    if not cfg.gradient_checkpointing:
        at_peak = 0  # the activation peak comes before the backward pass makes gradients
    elif fused:
        at_peak = largest
    else:
        at_peak = count.get("unet", 0)
    activations = activation_gib(stage, cfg)
    chunk = min(STEP_CHUNK, sum(count.values()))  # a chunk never outgrows what trains
    step = max(largest, chunk) * 12 if per_weight == 2 else largest * 4
    if fused:  # the step runs inside the backward pass, beside the activations
        activations += step / GIB
        step = 0
    adapters = sum(count.values()) if lora else 0
    opt = lora_optimizer_bytes(lora, trained, stage.optimizer) if lora else None
    return MemoryEstimate(
        weights=(
            (sum(PARAMS.values()) + adapters) * per_weight + (VAE_PARAMS * 4 if sampling else 0)
        )
        / GIB,
        gradients=gradients * per_weight / GIB,
        optimizer=(optimizer_bytes(stage, trained) if opt is None else opt) / GIB,
        activations=activations,
        overhead=CUDA_CONTEXT_GIB,
        step_buffers=step / GIB,
        gradients_at_peak=at_peak * per_weight / GIB,
        ema=ema_bytes(stage, cfg, trained) / GIB,
    )


def ema_bytes(stage: StageConfig, cfg: TrainConfig, trained: list[str]) -> float:
    """GPU bytes of the EMA: fp32 per trained weight when it is on and kept on the GPU."""
    if not stage_decay(cfg, stage) or cfg.ema_device != "gpu":
        return 0.0
    return sum(PARAMS[m] for m in trained) * 4.0


ZERO_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default reduce_bucket_size


def _zero2_memory(
    stage: StageConfig, cfg: TrainConfig, sampling: bool, processes: int
) -> MemoryEstimate:
    lrs = _lrs(stage)
    trained_names = [m for m, lr in lrs.items() if lr > 0]
    trained = sum(PARAMS[m] for m in trained_names)
    frozen = sum(PARAMS[m] for m in PARAMS if m not in trained_names)
    low = 2 if cfg.mixed_precision == "bf16" else 4
    frozen_bytes = 2 if cfg.weight_dtype == "bf16" else 4
    vae = VAE_PARAMS * 4 if sampling else 0
    return MemoryEstimate(
        weights=(trained * low + frozen * frozen_bytes + vae + trained * 4 / processes) / GIB,
        gradients=(trained * low / processes + min(trained, ZERO_BUCKET_ELEMENTS) * low) / GIB,
        optimizer=optimizer_bytes(stage, trained_names) / processes / GIB,
        activations=activation_gib(stage, cfg),
        overhead=CUDA_CONTEXT_GIB,
    )
