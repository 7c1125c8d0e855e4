"""An exponential moving average (EMA) of the trained weights, kept in fp32 beside them.

The loop calls `update(step)` once per optimizer step; every `ema_every_n_steps` steps the
k-th update moves each average towards the weights: ema += (1 - d_k) (w - ema), with
d_k = min(decay, (1 + k) / (10 + k)) (the warm-up diffusers and OneTrainer use, so the
average leaves the starting weights). Everything follows from the step counter, so the
state needs only the averages: `ema-<module>.safetensors` in each resumable state, and a
killed run resumes bit-identically. Samples and validation use the averages when EMA is on
(`applied()`); `tagtune export --ema` writes them (`apply_ema_weights`).

diffusers' `EMAModel` was considered: it averages in the weights' dtype (bf16 weights lose
every update below a bf16 ulp, which is all of them at decay 0.999), needs the average on
the weights' device, and keys the averages by position; hence this small class.
DeepSpeed ZeRO-2 is refused: its fp32 master weights are sharded across processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tagtune.core.errors import TrainingError
from tagtune.recipe.model import StageConfig, TrainConfig
from tagtune.train.state import state_meta

PREFIX = "ema-"
"""A state's EMA files are `ema-<module>.safetensors`."""


def stage_decay(cfg: TrainConfig, stage: StageConfig) -> float:
    """The EMA decay of a stage: its own `ema_decay`, else `train.ema_decay` (0: off)."""
    return cfg.ema_decay if stage.ema_decay is None else stage.ema_decay


def warmup_decay(decay: float, update: int) -> float:
    """Decay of the `update`-th update (1-based): min(decay, (1 + k) / (10 + k))."""
    return min(decay, (1 + update) / (10 + update))


class WeightEMA:
    """fp32 averages of the trained modules' parameters, on the training device or the CPU."""

    def __init__(self, decay: float, every_n_steps: int = 1, device: str = "gpu") -> None:
        self.decay = decay
        self.every = every_n_steps
        self.device = device
        self.params: dict[str, dict[str, torch.nn.Parameter]] = {}
        self.shadow: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def for_stage(cls, cfg: TrainConfig, stage: StageConfig) -> WeightEMA | None:
        """The stage's EMA from the recipe, or None when its decay is 0."""
        decay = stage_decay(cfg, stage)
        return cls(decay, cfg.ema_every_n_steps, cfg.ema_device) if decay else None

    def start(
        self, trained: dict[str, torch.nn.Module], resume_from: Path | None, zero: bool = False
    ) -> None:
        """Average from the modules' weights now, or from the resumed state's averages."""
        if zero:
            raise TrainingError(
                "EMA is not supported under DeepSpeed ZeRO-2 (its fp32 weights are sharded)",
                field="train.ema_decay", value=self.decay,
                hint="set ema_decay = 0, or train with DDP (accelerate launch --multi_gpu)",
            )  # fmt: skip
        self.params = {name: dict(module.named_parameters()) for name, module in trained.items()}
        if resume_from is None:
            self.shadow = {
                name: {
                    k: p.detach().to(self._device(p), torch.float32, copy=True)
                    for k, p in params.items()
                }
                for name, params in self.params.items()
            }
            return
        self._load(Path(resume_from))

    def _device(self, p: torch.Tensor) -> torch.device:
        return torch.device("cpu") if self.device == "cpu" else p.device

    def _load(self, path: Path) -> None:
        meta = state_meta(path).get("ema") or {}
        kept = (meta.get("decay"), meta.get("every_n_steps"))
        if kept != (self.decay, self.every):
            then = f"EMA decay {kept[0]} every {kept[1]} steps" if meta else "no EMA"
            raise TrainingError(
                f"the state kept {then}; the recipe now asks for decay {self.decay} every "
                f"{self.every} steps",
                file=path, field="train.ema_decay",
                hint="restore the EMA settings, or remove the stage folder to start over",
            )  # fmt: skip
        self.shadow = {}
        for name, params in self.params.items():
            file = path / f"{PREFIX}{name}.safetensors"
            if not file.is_file():
                raise TrainingError("the state has no EMA of a trained module", file=file)
            saved = load_file(file)
            if saved.keys() != params.keys():
                raise TrainingError("the EMA file does not fit the trained module", file=file)
            self.shadow[name] = {k: saved[k].to(self._device(p)) for k, p in params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step `step`: move the averages towards the weights (every N steps)."""
        if step % self.every:
            return
        weight = 1.0 - warmup_decay(self.decay, step // self.every)
        for name, params in self.params.items():
            shadow = self.shadow[name]
            for key, p in params.items():
                s = shadow[key]
                s.lerp_(p.detach().to(s.device, torch.float32), weight)

    def state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """File stem -> tensors to save in a resumable state (`ema-<module>`)."""
        return {f"{PREFIX}{name}": dict(shadow) for name, shadow in self.shadow.items()}

    def meta(self) -> dict[str, Any]:
        """What a state records about the EMA (checked on resume)."""
        return {"decay": self.decay, "every_n_steps": self.every, "device": self.device}

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The modules hold the averages inside the block; their weights come back after.

        The weights wait on the CPU, so this costs no GPU memory.
        """
        backup: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            with torch.no_grad():
                for name, params in self.params.items():
                    for key, p in params.items():
                        backup.append((p, p.detach().to("cpu", copy=True)))
                        p.copy_(self.shadow[name][key])
            yield
        finally:
            with torch.no_grad():
                for p, saved in backup:
                    p.copy_(saved)


def ema_applied(ema: WeightEMA | None) -> contextlib.AbstractContextManager:
    """`ema.applied()`, or nothing when EMA is off."""
    return ema.applied() if ema is not None else contextlib.nullcontext()


def check_has_ema(state: Path, stage: str) -> list[Path]:
    """The EMA files of a state; a TrainingError naming the stage when it has none."""
    files = sorted(Path(state).glob(f"{PREFIX}*.safetensors"))
    if not files:
        raise TrainingError(
            f"stage {stage!r} kept no EMA of its weights", file=state,
            hint="train it with ema_decay > 0 ([train] or the stage), or export without --ema",
        )  # fmt: skip
    return files


def apply_ema_weights(components: Any, state: Path, stage: str) -> list[str]:
    """Load a state's EMA averages into the components' modules; returns the modules loaded.

    A state without EMA files is a TrainingError naming the stage.
    """
    loaded = []
    for file in check_has_ema(state, stage):
        name = file.name[len(PREFIX) : -len(".safetensors")]
        module = getattr(components, name, None)
        if not isinstance(module, torch.nn.Module):
            raise TrainingError("EMA file of an unknown module", file=file)
        params = dict(module.named_parameters())
        saved = load_file(file)
        if saved.keys() != params.keys():
            raise TrainingError("the EMA file does not fit the model", file=file)
        with torch.no_grad():
            for key, value in saved.items():
                params[key].copy_(value)
        loaded.append(name)
    return loaded
