"""DeepSpeed ZeRO stage 2 under `accelerate launch`: optimizer states and gradients sharded.

The accelerate config chooses DeepSpeed, the ZeRO stage and offloading; the recipe stays the
source of truth for batch size, accumulation, clipping and precision, so a stage trains the
same with or without DeepSpeed. The trained modules go into one DeepSpeed engine per stage;
the loop still calls them directly (conditioning and sampling see plain modules) and hands
backward and the optimizer step to the engine.

Resumable states stay safetensors + JSON: the full fp32 weights (gathered from the shards)
as in any state, plus one `zero-rank-<r>` pair per process holding that process's fp32
master shard and optimizer state. A state written by N processes resumes with N processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tagtune.core.errors import DependencyError, TrainingError
from tagtune.recipe.model import StageConfig
from tagtune.train.state import flatten_optimizer, unflatten_optimizer

SUPPORTED_ZERO_STAGE = 2


def is_deepspeed_launch() -> bool:
    """True when `accelerate launch` was configured for DeepSpeed (it sets the env var)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def import_deepspeed() -> Any:
    """The deepspeed module, or a DependencyError saying how to install it."""
    try:
        import deepspeed
    except ImportError:
        raise DependencyError(
            "the accelerate config asks for DeepSpeed, which is not installed",
            field="distributed_type",
            value="DEEPSPEED",
            hint="pip install 'tagtune[deepspeed]' (or deepspeed)",
        ) from None
    return deepspeed


def launch_config() -> dict[str, Any]:
    """The DeepSpeed config accelerate built from the launcher's settings ("auto" left open)."""
    from accelerate.utils import DeepSpeedPlugin

    return DeepSpeedPlugin().deepspeed_config


def _drop_auto(value: Any) -> Any:
    """A copy without the "auto" entries (DeepSpeed then uses its own default for each)."""
    if isinstance(value, dict):
        return {k: _drop_auto(v) for k, v in value.items() if v != "auto"}
    return value


def deepspeed_config(
    base: dict[str, Any], stage: StageConfig, mixed_precision: str, world_size: int
) -> dict[str, Any]:
    """The engine config of one stage: the launcher's ZeRO settings, the recipe's numbers.

    Batch size, accumulation, clipping and precision come from the recipe; a ZeRO stage
    other than 2 or fp16 loss scaling is a TrainingError naming the allowed values.
    """
    config = _drop_auto(base)  # a new dict at every level: `base` is left alone
    zero = config.get("zero_optimization") or {}
    if zero.get("stage") != SUPPORTED_ZERO_STAGE:
        raise TrainingError(
            f"DeepSpeed ZeRO stage {zero.get('stage')!r} is not supported: tagtune's loop calls "
            "the modules directly, which stage 3's partitioned parameters do not allow",
            field="deepspeed_config.zero_stage",
            value=zero.get("stage"),
            allowed=str(SUPPORTED_ZERO_STAGE),
            hint="set zero_stage: 2 in the accelerate config (docs/multi-gpu.md)",
        )
    if mixed_precision == "fp16":
        raise TrainingError(
            "DeepSpeed runs use bf16 or full precision: fp16 would need DeepSpeed's own loss "
            "scaler, whose state tagtune does not save",
            field="train.mixed_precision",
            value="fp16",
            allowed="bf16, no",
        )
    config.update(
        train_micro_batch_size_per_gpu=stage.batch_size,
        gradient_accumulation_steps=stage.gradient_accumulation,
        train_batch_size=stage.batch_size * stage.gradient_accumulation * world_size,
        gradient_clipping=float(stage.max_grad_norm or 0.0),
        bf16={"enabled": mixed_precision == "bf16"},
        fp16={"enabled": False},
        zero_optimization=zero,
        # the recipe's optimizers (AdamW, 8-bit AdamW, Adafactor) run on the fp32 shards
        zero_allow_untested_optimizer=True,
        zero_force_ds_cpu_optimizer=False,
        steps_per_print=2**31 - 1,
    )
    return config


class ZeroEngine:
    """The trained modules and their optimizer inside one DeepSpeed ZeRO-2 engine.

    The loop keeps calling the modules; `backward` and `step` go through the engine, which
    reduce-scatters gradients and steps each process's fp32 shard. `finish` writes the fp32
    master weights back into the modules (in their original dtype) and releases the engine.
    """

    def __init__(
        self,
        trained: dict[str, torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        config: dict[str, Any],
        world_size: int,
    ) -> None:
        deepspeed = import_deepspeed()
        self.trained = trained
        self.world_size = world_size
        self.dtypes = {n: next(m.parameters()).dtype for n, m in trained.items()}
        self.bundle = torch.nn.ModuleDict(trained)
        self.engine, self.zero_optimizer, _, _ = deepspeed.initialize(
            model=self.bundle, optimizer=optimizer, config=config
        )
        self.optimizer = optimizer  # its groups now hold this process's fp32 shards

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        """Backpropagate one micro-batch; gradients are reduced into shards as they come.

        `loss` is this process's share of the step's mean loss; the engine averages over
        processes, so it is scaled by the process count to make that average the sum.
        """
        self.engine.set_gradient_accumulation_boundary(last_micro_batch)
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self) -> None:
        """Clip (global norm), step the shards, gather the weights, clear the gradients."""
        self.engine.step()

    def full_weights(self, keep: bool = True) -> dict[str, dict[str, torch.Tensor]]:
        """fp32 master weights of every trained module, whole, on the CPU.

        A collective: every process must call it; only those with `keep` hold the result
        (the others would each need a full copy in host memory for nothing).
        """
        from deepspeed.utils import safe_get_full_fp32_param

        out: dict[str, dict[str, torch.Tensor]] = {}
        for name, module in self.trained.items():
            params = dict(module.named_parameters())
            sd = {}
            for key, value in module.state_dict().items():
                p = params.get(key)
                full = safe_get_full_fp32_param(p) if p is not None else None
                if keep:
                    sd[key] = (full if full is not None else value.float()).detach().cpu()
            out[name] = sd
        return out if keep else {}

    def save_shard(self, folder: Path, rank: int) -> None:
        """Write this process's fp32 shard and optimizer state as `zero-rank-<rank>.*`."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors, meta = flatten_optimizer(self.optimizer.state_dict())
        tensors = {f"optimizer.{k}": v for k, v in tensors.items()}
        for g, shard in enumerate(self.zero_optimizer.single_partition_of_fp32_groups):
            tensors[f"fp32.{g}"] = shard.detach().contiguous().cpu()
        save_file(tensors, folder / f"zero-rank-{rank}.safetensors")
        info = {"rank": rank, "world_size": self.world_size, "optimizer": meta}
        (folder / f"zero-rank-{rank}.json").write_text(json.dumps(info))

    def load_shard(self, path: Path, rank: int) -> None:
        """Put this process's fp32 shard and optimizer state back from a state folder."""
        file = Path(path) / f"zero-rank-{rank}.safetensors"
        if not file.is_file():
            raise TrainingError(
                "the state has no DeepSpeed shard for this process", file=file,
                hint="resume with the processes and accelerate config that wrote it",
            )  # fmt: skip
        tensors = load_file(file)
        info = json.loads(file.with_suffix(".json").read_text())
        shards = self.zero_optimizer.single_partition_of_fp32_groups
        for g, shard in enumerate(shards):
            saved = tensors.get(f"fp32.{g}")
            if saved is None or saved.shape != shard.shape:
                raise TrainingError(
                    f"fp32 shard {g} does not fit this run's partition "
                    f"({None if saved is None else tuple(saved.shape)} vs {tuple(shard.shape)})",
                    file=file, hint="resume with the processes and modules that wrote the state",
                )  # fmt: skip
            shard.data.copy_(saved)
        opt = {k[len("optimizer.") :]: v for k, v in tensors.items() if k.startswith("optimizer.")}
        self.optimizer.load_state_dict(unflatten_optimizer(opt, info["optimizer"]))

    def finish(self) -> None:
        """Put the fp32 master weights into the modules (original dtype); free the engine.

        Parameter by parameter, so no process holds a second copy of a whole module.
        """
        from deepspeed.utils import safe_get_full_fp32_param

        for name, module in self.trained.items():
            dtype = self.dtypes[name]
            for p in module.parameters():
                full = safe_get_full_fp32_param(p)
                p.data = full.to(dtype) if full is not None else p.data.to(dtype).clone()
            module.to(dtype)
        self.engine.destroy()


def start_engine(
    trained: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    stage: StageConfig,
    mixed_precision: str,
    runtime: Any,
) -> ZeroEngine:
    """A ZeRO-2 engine for one stage, configured from the launcher and the recipe."""
    config = deepspeed_config(launch_config(), stage, mixed_precision, runtime.world_size)
    return ZeroEngine(trained, optimizer, config, runtime.world_size)


def check_zero_state(meta: dict[str, Any], world_size: int | None, path: Path) -> None:
    """A state resumes only under the same scheme: DeepSpeed with the same process count,
    or no DeepSpeed; anything else is a TrainingError saying which."""
    saved = meta.get("zero_world_size")
    if saved == world_size:
        return
    if saved is None:
        what = "without DeepSpeed; this run uses DeepSpeed ZeRO-2"
    elif world_size is None:
        what = f"by DeepSpeed ZeRO-2 with {saved} processes; this run does not use DeepSpeed"
    else:
        what = f"by DeepSpeed ZeRO-2 with {saved} processes; this run has {world_size}"
    raise TrainingError(
        f"the state was written {what}",
        file=path, hint="resume with the launch settings that wrote it, or start the stage over",
    )  # fmt: skip
