"""bf16 weights that move: optimizer steps taken in fp32, written back by stochastic rounding.

Why. A bf16 weight w has 8 significant bits: its ulp is 2^-7 to 2^-8 of |w|. An AdamW update
is about the learning rate, so at lr 1e-5 (stage main) or 1e-6 (stage favorites) it is below
half an ulp of every weight above ~0.003 (1e-5) or ~0.0003 (1e-6) in magnitude: rounded to
nearest, the new weight is the old one, and the stage trains almost nothing.

The choice. Three known remedies:
- fp32 master weights: exact, but 4 more bytes per trained parameter (12.6 GiB for SDXL's
  U-Net and both text encoders), which is what bf16 weights were meant to save: the reference
  recipe no longer fits a 24 GB card.
- Kahan-compensated updates: a bf16 buffer per weight keeps what rounding dropped (2 more
  bytes per parameter, 6.3 GiB), and each optimizer's update must be rewritten around it.
- Stochastic rounding (what the fused Adafactor of sd-scripts and OneTrainer do): round each
  new weight up or down at random, with the probability of rounding up equal to how far the
  exact value lies towards the upper neighbour. The expected weight is the exact fp32 result,
  so over many steps a weight moves as it would in fp32, plus zero-mean noise of at most one
  ulp. It costs no memory per parameter and wraps any optimizer unchanged.
tagtune uses stochastic rounding: it is the one that keeps the reference recipe within 24 GiB
and works the same for adamw, adamw8bit (bitsandbytes' own kernels) and adafactor, in the
fused backward pass too.

How. `RoundedSteps` steps a chunk of parameters at a time on fp32 copies of their weights and
gradients (at most CHUNK_ELEMENTS elements beside the largest tensor), through a view of the
optimizer holding only that chunk, then rounds each result into its bf16 weight: 16 random
bits are added below bf16's last bit and the low half of the fp32 word is cut off. The bits
come from a generator keyed by (seed, stage, step, chunk) on the weights' device, so a resumed
run draws exactly the bits the uninterrupted one did. Optimizer states are therefore created
in fp32 (AdamW's moments in bf16 would lose the 0.999 decay of the second moment the same
way); `load_state_dict` keeps them fp32 where torch would cast them to the weights' dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from tagtune.train.data import keyed_generator

LOW_PRECISION = (torch.bfloat16,)
CHUNK_ELEMENTS = 1 << 24  # fp32 copies of up to 16M weights and gradients at a time (128 MiB)
_LOW_HALF = -(1 << 16)  # int32 0xFFFF0000: keeps sign, exponent and bf16's 7 mantissa bits


def stochastic_round_(target: torch.Tensor, value: torch.Tensor, generator: torch.Generator):
    """Write fp32 `value` into bf16 `target`, rounding each element up or down at random.

    The chance of rounding away from zero is the share of the ulp that the dropped low 16
    bits make up, so E[target] = value. `generator` must be on `value`'s device.
    """
    bits = torch.randint(
        0, 1 << 16, value.shape, dtype=torch.int32, device=value.device, generator=generator
    )
    bits.add_(value.view(torch.int32)).bitwise_and_(_LOW_HALF)
    target.copy_(bits.view(torch.float32))  # low half zero: the bf16 cast is exact
    return target


def round_generator(key: tuple[Any, ...], device: torch.device) -> torch.Generator:
    """A generator on `device` seeded from `key` (the same bits on every run of that key)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(keyed_generator("round", *key).initial_seed())
    return gen


class RoundedSteps:
    """Optimizer steps for bf16 weights: computed in fp32, rounded stochastically into them.

    Stands in for the optimizer where the loop steps it (`step`, also under a GradScaler,
    which sees `param_groups` and calls `step`), in the fused backward pass
    (`step_parameter`), and when a state is loaded (`load_state_dict`). Set `step_number`
    to the optimizer step about to be taken: it keys the random bits.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        seed: int,
        stage_index: int,
        chunk_elements: int = CHUNK_ELEMENTS,
    ) -> None:
        self.optimizer = optimizer
        self.seed = seed
        self.stage_index = stage_index
        self.chunk_elements = chunk_elements
        self.step_number = 0

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups."""
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        """The optimizer's per-parameter state."""
        return self.optimizer.state

    def step(self) -> None:
        """One optimizer step over every parameter with a gradient, chunk by chunk."""
        for n, (group, params) in enumerate(self._chunks()):
            self._step_view(group, params, ("chunk", n))

    def step_parameter(self, group: dict[str, Any], param: torch.Tensor, index: int) -> None:
        """Step one parameter (number `index` in the optimizer), for the fused backward pass."""
        self._step_view(group, [param], ("param", index))

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state dict."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an optimizer state, keeping its floating-point tensors in their saved dtype.

        torch (and bitsandbytes) cast floating state to the parameter's dtype on load; here
        the parameters are bf16 but the states were stepped in fp32, and must stay so for a
        resumed run to continue bit-identically.
        """
        self.optimizer.load_state_dict(state_dict)
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for pid, param in zip(ids, params, strict=True):
            for key, value in state_dict["state"].get(pid, {}).items():
                if torch.is_tensor(value) and value.is_floating_point() and key != "step":
                    self.optimizer.state[param][key] = value.to(param.device)

    def _chunks(self) -> Iterator[tuple[dict[str, Any], list[torch.Tensor]]]:
        """(group, parameters) runs of at most chunk_elements (or one larger tensor)."""
        for group in self.optimizer.param_groups:
            run: list[torch.Tensor] = []
            size = 0
            for p in group["params"]:
                if p.grad is None:
                    continue
                if run and size + p.numel() > self.chunk_elements:
                    yield group, run
                    run, size = [], 0
                run.append(p)
                size += p.numel()
            if run:
                yield group, run

    def _step_view(self, group: dict[str, Any], params: list[torch.Tensor], part: tuple) -> None:
        """Step `params` of `group` alone; bf16 ones on fp32 copies, then rounded back."""
        low = [p for p in params if p.dtype in LOW_PRECISION]
        held = [(p, p.data, p.grad) for p in low]
        for p, weight, grad in held:
            p.grad = None
            p.data = weight.float()
            p.grad = grad.float()
        groups = self.optimizer.param_groups
        self.optimizer.param_groups = [{**group, "params": params}]
        stepped = False
        try:
            self.optimizer.step()
            stepped = True
        finally:
            self.optimizer.param_groups = groups
            gen = None
            for p, weight, grad in held:
                if stepped:
                    if gen is None:
                        key = (self.seed, self.stage_index, self.step_number, *part)
                        gen = round_generator(key, weight.device)
                    stochastic_round_(weight, p.data, gen)
                p.grad = None
                p.data = weight
                p.grad = grad
