"""Processes and devices: one process, or several under `accelerate launch` (DDP or ZeRO-2).

accelerate's PartialState sets up the process group (NCCL on GPUs, gloo on CPUs) from the
launcher's environment. How gradients travel between processes is the training engine's
business (`tagtune.train.engines`: DistributedDataParallel without DeepSpeed, ZeRO-2 under a
DeepSpeed launch, whose process group is DeepSpeed's); the modules themselves stay plain for
conditioning, sampling and saving.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tagtune.core.errors import DependencyError


@dataclass
class Runtime:
    """Where this process runs and how it talks to the others."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    mixed_precision: str = "no"
    deepspeed: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes files."""
        return self.rank == 0

    def autocast(self):
        """Autocast context for the forward pass under bf16/fp16 mixed precision."""
        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def sum_loss(self, loss: float) -> float:
        """The sum of `loss` over processes."""
        if self.world_size == 1:
            return loss
        import torch.distributed as dist

        total = torch.tensor([loss], device=self.device, dtype=torch.float64)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total)

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order (on every process)."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def kill_switch(step: int) -> Callable[[int], None] | None:
    """A `StageJob.after_step` callback that SIGKILLs this process once optimizer step `step`
    is done, as a power cut would (None for step 0: never). The crash drills use it."""
    if step <= 0:
        return None

    def kill_after(done: int) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return kill_after


def make_runtime(mixed_precision: str) -> Runtime:
    """The runtime of this process; bf16/fp16 on a machine without CUDA is a DependencyError."""
    if mixed_precision != "no" and not torch.cuda.is_available():
        raise DependencyError(
            "mixed precision needs a CUDA GPU",
            field="train.mixed_precision",
            value=mixed_precision,
            allowed='"no" on this machine',
        )
    from tagtune.train.zero import is_deepspeed_launch

    if is_deepspeed_launch():
        return _deepspeed_runtime(mixed_precision)
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    kind = str(state.distributed_type).rsplit(".", 1)[-1]
    if kind == "FSDP":
        raise DependencyError(
            "FSDP is not supported by tagtune's loop",
            field="distributed_type",
            value=kind,
            allowed="single process, DDP (--multi_gpu) or DeepSpeed ZeRO-2; see docs/multi-gpu.md",
        )
    return Runtime(
        device=torch.device(state.device),
        rank=state.process_index,
        world_size=state.num_processes,
        mixed_precision=mixed_precision,
    )


def _deepspeed_runtime(mixed_precision: str) -> Runtime:
    """The runtime of a DeepSpeed launch: DeepSpeed's process group, one GPU per process."""
    import torch.distributed as dist

    from tagtune.train.zero import import_deepspeed

    deepspeed = import_deepspeed()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(auto_mpi_discovery=False, verbose=False)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    return Runtime(
        device=device,
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        mixed_precision=mixed_precision,
        deepspeed=True,
    )
