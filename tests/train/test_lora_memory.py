"""The dry-run memory estimate of a LoRA stage: frozen weights + LoRA parameters, their
gradients and optimizer state + the activations of a full backward pass."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from tagtune.recipe.lora import LoraConfig
from tagtune.recipe.model import Recipe, StageConfig
from tagtune.train.lora_memory import LAYERS, lora_optimizer_bytes, lora_params
from tagtune.train.memory import PARAMS, estimate_memory

GIB = 1024**3


@pytest.mark.slow
def test_lora_layer_table_is_what_a_lora_targets_in_the_real_sdxl():
    from tagtune.models.configs import sdxl_base_configs
    from tagtune.models.load import empty_module
    from tagtune.train.lora import COMPONENTS, target_category, target_paths

    configs = sdxl_base_configs()
    parts = {name: empty_module(name, configs[name]) for name in COMPONENTS}
    every = LoraConfig(targets=["attention", "feed_forward", "convs"])
    found: dict[tuple[str, str], list[int]] = {}
    for name, paths in target_paths(SimpleNamespace(**parts), every).items():
        for path in paths:
            out, inp, *kernel = parts[name].get_submodule(path).weight.shape
            row = found.setdefault((name, target_category(COMPONENTS[name], path)), [0] * 5)
            spatial = bool(kernel) and kernel != [1, 1]
            row[2 if spatial else 0] += 1
            row[3 if spatial else 1] += inp * math.prod(kernel) + out
            row[4] = max(row[4], inp * math.prod(kernel), out)
    assert {k: tuple(v) for k, v in found.items()} == LAYERS
    # 1,052 kohya modules in all (the golden list's count)
    assert sum(n + n_conv for n, _, n_conv, _, _ in LAYERS.values()) == 722 + 66 + 72 + 192


def test_a_lora_stage_holds_frozen_weights_and_a_small_trained_part():
    cfg = Recipe().train
    full = StageConfig(name="full", optimizer="adamw")
    lora = StageConfig(name="lora", optimizer="adamw", method="lora", lora={"rank": 16})
    f, m = estimate_memory(full, cfg), estimate_memory(lora, cfg)
    adapters = lora_params(LoraConfig(rank=16), ["unet", "text_encoder", "text_encoder_2"])
    # rank 16 on attention + feed-forward: 16 x sum(in + out) of 1,006 layers
    assert adapters == 16 * (1_495_040 + 1_164_800 + 73_728 + 92_160 + 327_680 + 409_600)
    assert m.weights == pytest.approx((sum(PARAMS.values()) + adapters) * 2 / GIB)
    assert m.gradients == pytest.approx(adapters * 2 / GIB)
    assert m.optimizer == pytest.approx(adapters * 8 / GIB)
    assert m.activations == f.activations  # backward still runs through every module
    assert m.total < f.total - 10  # no full gradients nor AdamW moments: 8 GiB, not 20
    conv = lora.model_copy(update={"lora": LoraConfig(rank=16, targets=["convs"], conv_rank=8)})
    n_conv = lora_params(conv.lora, ["unet"])
    assert n_conv == 16 * 58_560 + 8 * 355_840
    factored = lora_optimizer_bytes(conv.lora, ["unet"], "adafactor")
    assert factored == 4 * (58_560 + 2 * 16 * 28 + 355_840 + 2 * 8 * 38)


def test_dry_run_shows_a_lora_stage(tmp_path):
    from tagtune.cli.main import app
    from tagtune.recipe.workspace import init_workspace

    recipe = Recipe()
    recipe.train.stages = [
        recipe.train.stages[0],
        StageConfig(name="style", method="lora", lr_unet=1e-4, lr_text_encoder=0.0,
                    lr_text_encoder_2=0.0),
    ]  # fmt: skip
    ws = init_workspace(tmp_path / "ws", recipe)
    result = CliRunner().invoke(app, ["train", str(ws.root), "--dry-run", "--json"])
    # the plan is printed even when the workspace has problems (no base, no catalog, CPU)
    assert result.exit_code == 2, result.output
    stages = json.loads(result.stdout)["stages"]
    assert [s["method"] for s in stages] == ["full", "lora"]
    assert stages[1]["trained_parameters"] == lora_params(LoraConfig(), ["unet"])
    assert stages[1]["memory_gib_estimate"]["total"] < stages[0]["memory_gib_estimate"]["total"]
    table = CliRunner().invoke(app, ["train", str(ws.root), "--dry-run"])
    assert "lora" in table.stdout  # beside the optimizer (the table wraps it)
