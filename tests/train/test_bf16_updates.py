"""bf16 weights that move: updates far below a bf16 ulp are rounded stochastically, so a stage
at lr 1e-6 changes bf16 weights as it changes fp32 ones, where round-to-nearest drops them."""

from __future__ import annotations

import copy

import pytest
import torch

from tagtune.recipe.workspace import init_workspace
from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
from tagtune.train import rounding
from tagtune.train.rounding import round_generator, stochastic_round_
from tagtune.train.stages import run_training

FROZEN_TE = {"lr_text_encoder": 0.0, "lr_text_encoder_2": 0.0}


def test_stochastic_rounding_lands_on_a_neighbour_and_is_unbiased():
    lo = torch.tensor(1.0, dtype=torch.bfloat16)
    hi = torch.nextafter(lo, torch.tensor(2.0, dtype=torch.bfloat16))
    value = torch.full((200_000,), 1.0 + 0.3 * float(hi - lo))  # 30% of the way up
    out = torch.empty_like(value, dtype=torch.bfloat16)
    stochastic_round_(out, value, round_generator((0, 0, 0), torch.device("cpu")))
    assert set(out.unique().tolist()) == {float(lo), float(hi)}
    assert float((out == hi).float().mean()) == pytest.approx(0.3, abs=0.01)
    neg = torch.empty_like(out)
    stochastic_round_(neg, -value, round_generator((0, 0, 0), torch.device("cpu")))
    assert torch.equal(neg, -out)  # the magnitude is rounded: symmetric around zero
    again = torch.empty_like(out)
    stochastic_round_(again, value, round_generator((0, 0, 0), torch.device("cpu")))
    assert torch.equal(again, out)  # the same key draws the same bits
    exact = torch.tensor([0.0, -2.5, float("inf")])
    stochastic_round_(out[:3], exact, round_generator((1,), torch.device("cpu")))
    assert out[:3].tolist() == [0.0, -2.5, float("inf")]


def _bf16_exact(tiny_sdxl):
    """The tiny model with U-Net weights that bf16 holds exactly: both runs start equal."""
    base = copy.deepcopy(tiny_sdxl)
    with torch.no_grad():
        for p in base.unet.parameters():
            p.copy_(p.bfloat16().float())
    return base


class Stages:
    """Runs of one 3-step stage at lr 1e-6 on one synthetic workspace (each its own run)."""

    def __init__(self, root, base) -> None:
        self.base = base
        self.ws, self.latents = make_training_workspace(root, tiny_train_recipe(), n=6)
        self.runs = 0

    def unet_change(self, weight_dtype: str, optimizer: str, fused: bool = False):
        """U-Net weights after the stage minus before, flattened, in fp32."""
        recipe = tiny_train_recipe(
            epochs=1, batch_size=2, optimizer=optimizer, lr_unet=1e-6, scheduler="constant",
            warmup_ratio=0.0, **FROZEN_TE,
        )  # fmt: skip
        self.runs += 1
        recipe.train.run = f"run{self.runs}"
        recipe.train.weight_dtype = weight_dtype
        recipe.train.fused_backward = fused
        init_workspace(self.ws.root, recipe, force=True)
        comps = copy.deepcopy(self.base)
        summary = run_training(self.ws, components=comps, latents=self.latents, progress=False)
        assert summary.ran[0]["steps"] == 3
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[weight_dtype]
        assert next(comps.unet.parameters()).dtype == dtype
        with torch.no_grad():
            return torch.cat(
                [(a.float() - b.float()).flatten()
                 for a, b in zip(comps.unet.parameters(), self.base.unet.parameters(), strict=True)]
            )  # fmt: skip


def _projection(change, reference) -> float:
    """How much of the fp32 change the bf16 change carries: dot / |fp32 change|^2."""
    return float(change.dot(reference) / reference.dot(reference))


def test_bf16_weights_move_like_fp32_weights_at_lr_1e6(tmp_path, tiny_sdxl, monkeypatch):
    stages = Stages(tmp_path / "ws", _bf16_exact(tiny_sdxl))
    fp32 = stages.unet_change("fp32", "adamw")
    assert fp32.abs().max() < 1e-5  # far below half a bf16 ulp of most weights
    bf16 = stages.unet_change("bf16", "adamw")
    # measured 0.98 (the noise of rounding averages out over 3.9M weights)
    assert 0.8 < _projection(bf16, fp32) < 1.2
    # round-to-nearest, as torch writes a bf16 weight: measured 0.008, nearly every update lost
    monkeypatch.setattr(
        rounding, "stochastic_round_", lambda target, value, gen: target.copy_(value)
    )
    nearest = stages.unet_change("bf16", "adamw")
    assert _projection(nearest, fp32) < 0.1


def test_fused_adafactor_moves_bf16_weights_like_fp32_weights(tmp_path, tiny_sdxl):
    stages = Stages(tmp_path / "ws", _bf16_exact(tiny_sdxl))
    fp32 = stages.unet_change("fp32", "adafactor", fused=True)
    bf16 = stages.unet_change("bf16", "adafactor", fused=True)
    assert 0.8 < _projection(bf16, fp32) < 1.2  # measured 0.99; round-to-nearest 0.010
