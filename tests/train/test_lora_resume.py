"""A LoRA stage killed with SIGKILL and resumed ends bit-identical to one that never stopped."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
from tagtune.train.stages import run_training


def _recipe():
    # 4 images, batch 2: 2 steps per epoch, 4 steps; states at 2 and 4. LoRA dropout draws from
    # torch's RNG, keyed per micro-batch (`tagtune.train.lora.dropout_draws`)
    recipe = tiny_train_recipe(
        epochs=2, batch_size=2, shuffle_captions=True, noise_offset=0.05, min_snr_gamma=5.0,
        method="lora", lora={"rank": 4, "dropout": 0.1}, lr_unet=1e-2, lr_text_encoder=1e-3,
        lr_text_encoder_2=0.0,
    )  # fmt: skip
    recipe.train.save_every_n_steps = 2
    recipe.train.keep_last = 2
    return recipe


def _drill(ws_root, kill_at: int | None, resume: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TAGTUNE_KILL_AT_STEP": str(kill_at or 0)}
    cmd = [sys.executable, "-m", "tagtune.synthetic.runs", str(ws_root)]
    if resume:
        cmd.append("--resume")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_then_resume_of_a_lora_stage_is_bit_identical(tmp_path, tiny_sdxl):
    ws, _ = make_training_workspace(tmp_path / "killed", _recipe(), n=4)
    assert _drill(ws.root, 3, resume=False).returncode == -9  # state at 2, killed at 3
    done = _drill(ws.root, None, resume=True)
    assert done.returncode == 0, done.stderr[-3000:]

    ref, lat = make_training_workspace(tmp_path / "ref", _recipe(), n=4)
    run_training(ref, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)

    final = "runs/run1/main/states/step-4"
    for name in ("unet", "text_encoder", "optimizer"):
        a = load_file(ws.root / final / f"{name}.safetensors")
        b = load_file(ref.root / final / f"{name}.safetensors")
        assert a.keys() == b.keys() and a
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], name
    lora = load_file(ws.root / final / "unet.safetensors")
    assert all(".lora_" in k for k in lora)  # the state holds the LoRA alone
