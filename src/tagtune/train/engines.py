"""How a stage's weights are updated: one engine per way of training, one interface for the loop.

The loop asks an engine to run each micro-batch's forward pass and backward pass, to take the
optimizer step, to say what a resumable state holds, to load one, and to clean up. Which
engine a stage gets follows from the launch and the recipe (`open_engine`):

- `PlainEngine`: one process. After the step's backward passes: clip the global gradient
  norm, step, clear the gradients.
- `DDPEngine`: several processes without DeepSpeed. The trained modules are wrapped in
  torch's DistributedDataParallel, which all-reduces gradient buckets while backward still
  runs; micro-batches before the last of an accumulation step run under `no_sync`.
- `FusedEngine`: one process, Adafactor stepping each parameter inside backward, as soon
  as its gradient is ready (`attach_fused_step`); `step` has nothing left to do.
- `DeepSpeedEngine`: a DeepSpeed launch; ZeRO-2 shards gradients and optimizer states
  (`tagtune.train.zero`).

Every loss the loop hands in is this process's share of the step's mean loss (the sum of its
per-sample losses over the global batch size and the micro-batch count), so the gradients
of a step are the SUM over processes and micro-batches: what one process with the same
global batch gets. DDP averages over processes, so `DDPEngine` scales each loss by the
process count before backward.

Under fp16 a `torch.amp.GradScaler` scales the loss and unscales before clipping; otherwise
the scaler is created disabled and every call on it is a no-op. bf16 weights outside ZeRO
are stepped in fp32 and rounded stochastically (`tagtune.train.rounding.RoundedSteps`),
keyed by the step number `begin_step` receives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tagtune.core.errors import TrainingError
from tagtune.recipe.model import StageConfig, TrainConfig
from tagtune.train.optim import attach_fused_step, build_optimizer, set_lr
from tagtune.train.rounding import LOW_PRECISION, RoundedSteps
from tagtune.train.runtime import Runtime
from tagtune.train.state import load_state, state_meta
from tagtune.train.zero import ZeroEngine, check_zero_state, start_engine


@dataclass
class SavedState:
    """What a resumable state holds besides counters and RNG: weights (modules or state
    dicts), the optimizer to save (None when shards hold it), the folder of per-process
    shards to move in (None without any), and the engine's entries of state.json."""

    weights: dict[str, Any]
    optimizer: Any
    shards: Path | None
    meta: dict[str, Any]


class Engine:
    """The interface the loop calls, and what every engine shares (lr, forward, load).

    Use as a context manager, or call `close` when the stage ends, also when it raises.
    """

    zero_world_size: int | None = None  # recorded in state.json; a state resumes only alike

    def __init__(
        self,
        trained: dict[str, torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
    ) -> None:
        self.trained = trained
        self.optimizer = optimizer
        self.runtime = runtime

    def begin_step(self, step: int, lr_factor: float) -> dict[str, float]:
        """Set the learning rates of optimizer step `step` (0-based); return them per group."""
        return set_lr(self.optimizer, lr_factor)

    def forward(self, compute: Callable[[], torch.Tensor], last_micro_batch: bool) -> torch.Tensor:
        """Run `compute` (one micro-batch's loss) the way this engine needs its forward pass."""
        return compute()

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        """Backpropagate one micro-batch's loss, accumulating into the step's gradients."""
        raise NotImplementedError

    def step(self) -> None:
        """Clip, step and clear the gradients (nothing where backward already stepped)."""
        raise NotImplementedError

    def state(self, shards: Path) -> SavedState:
        """What a resumable state saves now; `shards` is where a sharded engine writes each
        process's part (a collective: every process calls it)."""
        raise NotImplementedError

    def load(self, path: Path) -> dict[str, Any]:
        """Load a resumable state (weights, optimizer, this process's RNG); return state.json.

        A state resumes only under the scheme that wrote it (DeepSpeed ZeRO-2 with the same
        process count, or no DeepSpeed): anything else is a TrainingError saying which.
        """
        check_zero_state(state_meta(path), self.zero_world_size, path)
        return load_state(path, self.trained, self._optimizer_to_load(), self.runtime.rank)

    def close(self) -> None:
        """Release what the engine holds (hooks, wrappers); the modules stay trained."""

    def _optimizer_to_load(self) -> Any:
        return self.optimizer

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PlainEngine(Engine):
    """One process: autograd backward, then clip, step (fp16 scaler, bf16 rounding), clear."""

    def __init__(
        self,
        trained: dict[str, torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        stage: StageConfig,
        seed: int,
        stage_index: int,
        fp16: bool = False,
    ) -> None:
        super().__init__(trained, optimizer, runtime)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.max_grad_norm = stage.max_grad_norm
        # bf16 weights are stepped in fp32 and rounded stochastically, so updates far below
        # a bf16 ulp still move them; fp32 weights go straight to the optimizer
        low = any(p.dtype in LOW_PRECISION for p in self.params)
        self.rounding = RoundedSteps(optimizer, seed, stage_index) if low else None
        self.stepper: Any = self.rounding or optimizer
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    def begin_step(self, step: int, lr_factor: float) -> dict[str, float]:
        """Set the learning rates of step `step`; it also keys the step's rounding bits."""
        if self.rounding is not None:
            self.rounding.step_number = step
        return super().begin_step(step, lr_factor)

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        """Backpropagate the (fp16: scaled) loss."""
        self.scaler.scale(loss).backward()

    def step(self) -> None:
        """Unscale (fp16), clip the global gradient norm, step, clear the gradients."""
        self.scaler.unscale_(self.stepper)
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.scaler.step(self.stepper)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def state(self, shards: Path) -> SavedState:
        """The trained modules, the optimizer, and the grad scaler's state (fp16 only)."""
        meta = {"zero_world_size": None, "scaler": self.scaler.state_dict() or None}
        return SavedState(self.trained, self.optimizer, None, meta)

    def load(self, path: Path) -> dict[str, Any]:
        """Load the state; optimizer states stay fp32 beside bf16 weights; scaler too."""
        meta = super().load(path)
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        return meta

    def _optimizer_to_load(self) -> Any:
        return self.stepper


class _LossOfTrainedModules(torch.nn.Module):
    """The trained modules as one module whose forward runs the loop's loss computation,
    so DistributedDataParallel sees each trained parameter used inside its own forward."""

    def __init__(self, trained: dict[str, torch.nn.Module]) -> None:
        super().__init__()
        self.trained = torch.nn.ModuleDict(trained)

    def forward(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return compute()


class DDPEngine(PlainEngine):
    """Several processes without DeepSpeed: DistributedDataParallel over the trained modules.

    Gradients are all-reduced bucket by bucket while backward runs, only in the last
    micro-batch of a step (`no_sync` before it). DDP averages over processes; each loss is
    multiplied by the process count first, so the gradients come out as the sum the other
    engines see (exactly so for 2, 4, 8... processes, where both factors are powers of two).
    Stages that train a text encoder leave parameters unused (SDXL takes the penultimate
    layer), so there DDP looks for unused parameters; they keep no gradient, as in one process.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from torch.nn.parallel import DistributedDataParallel

        device = self.runtime.device
        self.ddp: Any = DistributedDataParallel(
            _LossOfTrainedModules(self.trained),
            device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False,
            find_unused_parameters=any(n != "unet" for n in self.trained),
            gradient_as_bucket_view=True,
        )

    def forward(self, compute: Callable[[], torch.Tensor], last_micro_batch: bool) -> torch.Tensor:
        """Run `compute` inside DDP's forward; before the last micro-batch, without syncing."""
        if last_micro_batch:
            return self.ddp(compute)
        with self.ddp.no_sync():
            return self.ddp(compute)

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        """Backpropagate the loss times the process count (DDP divides by it again)."""
        self.scaler.scale(loss * self.runtime.world_size).backward()

    def close(self) -> None:
        """Drop the DDP wrapper (its gradient hooks go with it)."""
        self.ddp = None


class FusedEngine(PlainEngine):
    """One process, Adafactor stepping each parameter inside backward (fused backward pass).

    Only a parameter's own gradient exists at a time, so clipping is per tensor.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hooks = attach_fused_step(self.optimizer, self.max_grad_norm, self.rounding)

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        """Backpropagate; each parameter is stepped as soon as its gradient is ready."""
        loss.backward()

    def step(self) -> None:
        """Nothing: backward stepped every parameter and dropped its gradient."""

    def close(self) -> None:
        """Remove the stepping hooks from the parameters."""
        for hook in self.hooks:
            hook.remove()
        self.hooks = []


class DeepSpeedEngine(Engine):
    """A DeepSpeed launch: ZeRO-2 shards gradients and optimizer states over the processes.

    States hold the whole fp32 master weights (gathered) plus each process's shard; `close`
    puts the fp32 master weights back into the modules in their own dtype.
    """

    def __init__(
        self,
        trained: dict[str, torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        stage: StageConfig,
        mixed_precision: str,
    ) -> None:
        super().__init__(trained, optimizer, runtime)
        self.zero: ZeroEngine | None = start_engine(
            trained, optimizer, stage, mixed_precision, runtime
        )
        self.zero_world_size = runtime.world_size

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        """Backpropagate; gradients are reduced into shards as they come."""
        self.zero.backward(loss, last_micro_batch=last_micro_batch)

    def step(self) -> None:
        """Clip (global norm), step the shards, gather the weights, clear the gradients."""
        self.zero.step()

    def state(self, shards: Path) -> SavedState:
        """The gathered fp32 weights (main process) and every process's shard in `shards`."""
        rt = self.runtime
        weights = self.zero.full_weights(keep=rt.is_main)
        self.zero.save_shard(shards, rt.rank)
        rt.barrier()
        meta = {"zero_world_size": self.zero_world_size, "scaler": None}
        return SavedState(weights, None, shards, meta)

    def load(self, path: Path) -> dict[str, Any]:
        """Load the weights and RNG, then this process's fp32 shard and optimizer state."""
        meta = super().load(path)
        self.zero.load_shard(path, self.runtime.rank)
        return meta

    def close(self) -> None:
        """Put the fp32 master weights into the modules; free the DeepSpeed engine."""
        if self.zero is not None:
            zero, self.zero = self.zero, None
            zero.finish()

    def _optimizer_to_load(self) -> Any:
        return None  # the shards hold it


def open_engine(
    trained: dict[str, torch.nn.Module],
    stage: StageConfig,
    cfg: TrainConfig,
    runtime: Runtime,
    stage_index: int,
) -> Engine:
    """The engine of one stage, with its optimizer over the trained modules."""
    optimizer = build_optimizer(trained, stage, runtime.device)
    fp16 = cfg.mixed_precision == "fp16"
    if fused_backward(cfg, stage, runtime):
        return FusedEngine(trained, optimizer, runtime, stage, cfg.seed, stage_index)
    if runtime.deepspeed:
        return DeepSpeedEngine(trained, optimizer, runtime, stage, cfg.mixed_precision)
    kind = DDPEngine if runtime.world_size > 1 else PlainEngine
    return kind(trained, optimizer, runtime, stage, cfg.seed, stage_index, fp16)


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
