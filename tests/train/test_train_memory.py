"""The dry-run memory estimate: its terms follow the options, its constants follow SDXL, and
the recipe `tagtune init` writes fits a 24 GiB card."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from tagtune.recipe.model import Recipe
from tagtune.train import memory
from tagtune.train.memory import PARAMS, estimate_memory

GIB = 1024**3
TRAINED_MAIN = sum(PARAMS.values())


def test_sdxl_figures_are_the_packaged_configs():
    """Parameter counts, largest tensors and Adafactor's factored state of the real SDXL."""
    from tagtune.models.configs import sdxl_base_configs
    from tagtune.models.load import empty_module

    configs = sdxl_base_configs()
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        shapes = [p.shape for p in empty_module(name, configs[name]).parameters()]
        count = sum(math.prod(s) for s in shapes)
        assert count == (memory.VAE_PARAMS if name == "vae" else PARAMS[name]), name
        if name == "vae":
            continue
        assert max(math.prod(s) for s in shapes) == memory.LARGEST_TENSOR[name]
        factored = sum(
            math.prod(s[:-1]) + math.prod(s[:-2]) * s[-1] if len(s) >= 2 else math.prod(s)
            for s in shapes
        )
        assert factored == memory.ADAFACTOR_STATE[name], name
        eight_bit = sum(
            2 * math.prod(s) + 8 * math.ceil(math.prod(s) / 256)
            if math.prod(s) >= 4096
            else 8 * math.prod(s)
            for s in shapes
        )
        assert eight_bit / count == pytest.approx(memory.OPTIMIZER_BYTES["adamw8bit"], abs=5e-3)


def test_estimate_reflects_the_options():
    r = Recipe()
    main, fav = r.train.stages
    m = estimate_memory(main, r.train)
    assert m.optimizer == pytest.approx(TRAINED_MAIN * 2.034 / GIB)
    adamw = estimate_memory(main.model_copy(update={"optimizer": "adamw"}), r.train)
    assert adamw.optimizer == pytest.approx(TRAINED_MAIN * 8 / GIB)
    assert estimate_memory(fav, r.train).gradients == pytest.approx(PARAMS["unet"] * 2 / GIB)
    no_ckpt = r.train.model_copy(update={"gradient_checkpointing": False})
    assert estimate_memory(main, no_ckpt).activations > 10 * m.activations
    # with checkpointing the peak is the end of the U-Net's backward pass: the encoders'
    # gradients come later; without it, the end of the forward pass, before any gradient
    assert m.gradients_at_peak == pytest.approx(PARAMS["unet"] * 2 / GIB)
    assert m.total == pytest.approx(
        m.weights + m.optimizer + m.gradients_at_peak + m.activations + m.overhead
    )
    assert estimate_memory(main, no_ckpt).gradients_at_peak == 0
    sampling = estimate_memory(main, r.train, sampling=True)
    assert sampling.weights - m.weights == pytest.approx(memory.VAE_PARAMS * 4 / GIB)


def test_bf16_weights_halve_weights_and_gradients_but_adamw_moments_stay_fp32():
    r = Recipe()
    st = r.train.stages[0].model_copy(update={"optimizer": "adamw"})
    full = estimate_memory(st, r.train.model_copy(update={"weight_dtype": "fp32"}))
    half = estimate_memory(st, r.train.model_copy(update={"weight_dtype": "bf16"}))
    for part in ("weights", "gradients"):
        assert getattr(half, part) == pytest.approx(getattr(full, part) / 2), part
    assert half.optimizer == full.optimizer
    # stepping bf16 weights needs fp32 copies of the largest tensor (TE2's token embedding)
    assert half.step_buffers == pytest.approx(memory.LARGEST_TENSOR["text_encoder_2"] * 12 / GIB)


def test_fused_adafactor_holds_one_gradient_at_a_time():
    r = Recipe()
    st = r.train.stages[1].model_copy(update={"optimizer": "adafactor"})
    plain = estimate_memory(st, r.train)
    fused = estimate_memory(st, r.train.model_copy(update={"fused_backward": True}))
    assert plain.gradients == pytest.approx(PARAMS["unet"] * 2 / GIB)
    assert fused.gradients == pytest.approx(memory.LARGEST_TENSOR["unet"] * 2 / GIB)
    assert fused.optimizer == pytest.approx(memory.ADAFACTOR_STATE["unet"] * 4 / GIB)


def test_the_init_recipe_fits_a_24_gib_card_and_fp32_weights_would_not(tmp_path):
    from tagtune.cli.main import app

    res = CliRunner().invoke(app, ["init", str(tmp_path / "ws")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "ws"), "--dry-run", "--json"])
    assert res.exit_code == 2, res.output  # no base model, no catalog: listed after the plan
    stages = {s["name"]: s["memory_gib_estimate"] for s in json.loads(res.stdout)["stages"]}
    assert set(stages) == {"main", "favorites"}
    assert all(est["total"] <= 24 for est in stages.values()), stages
    r = Recipe()
    fp32 = r.train.model_copy(update={"weight_dtype": "fp32"})
    assert estimate_memory(r.train.stages[0], fp32).total > 24


def test_zero2_shards_master_weights_gradients_and_optimizer_states():
    r = Recipe()
    cfg = r.train.model_copy(update={"weight_dtype": "fp32"})
    st = r.train.stages[0].model_copy(update={"optimizer": "adamw"})
    one = estimate_memory(st, cfg, zero_processes=1)
    four = estimate_memory(st, cfg, zero_processes=4)
    assert four.optimizer == pytest.approx(one.optimizer / 4)
    assert four.optimizer == pytest.approx(TRAINED_MAIN * 8 / 4 / GIB)
    # bf16 weights on the GPU + a quarter of the fp32 master weights
    assert four.weights == pytest.approx(TRAINED_MAIN * (2 + 4 / 4) / GIB)
    assert four.gradients == pytest.approx((TRAINED_MAIN * 2 / 4 + 5e8 * 2) / GIB)
    ddp = estimate_memory(st, cfg)
    assert four.total < ddp.total - 25  # what makes AdamW fit: ~47 GiB of state shared out
    assert four.activations == ddp.activations
