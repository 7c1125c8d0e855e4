"""Crash safety: a run killed with SIGKILL (twice) and resumed ends bit-identical to one that never stopped."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
from tagtune.train.stages import run_training

MODULES = ("unet", "text_encoder", "text_encoder_2")


def _recipe(weight_dtype: str = "fp32"):
    # 6 images, batch 2: 3 steps per epoch, 6 steps; states at 2, 3, 4, 6; encoders train too
    recipe = tiny_train_recipe(
        epochs=2, batch_size=2, shuffle_captions=True, noise_offset=0.05, min_snr_gamma=5.0
    )
    recipe.train.save_every_n_steps = 2
    recipe.train.keep_last = 2
    recipe.train.weight_dtype = weight_dtype  # bf16: stochastic rounding draws keyed bits
    return recipe


def _drill(ws_root, kill_at: int | None, resume: bool) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TAGTUNE_KILL_AT_STEP": str(kill_at or 0)}
    cmd = [sys.executable, "-m", "tagtune.synthetic.runs", str(ws_root)]
    if resume:
        cmd.append("--resume")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300).returncode


def _stage_seconds(ws_root) -> float:
    return json.loads((ws_root / "runs/run1/run.json").read_text())["stages"][0]["seconds"]


@pytest.mark.slow
@pytest.mark.parametrize("weight_dtype", ["fp32", "bf16"])
def test_sigkill_twice_then_resume_is_bit_identical_to_an_uninterrupted_run(
    tmp_path, tiny_sdxl, weight_dtype
):
    rng = random.Random(7)
    first = rng.randint(2, 4)
    second = rng.randint(first + 1, 6)
    ws, _ = make_training_workspace(tmp_path / "killed", _recipe(weight_dtype), n=6)
    assert _drill(ws.root, first, resume=False) == -9
    killed_after = _stage_seconds(ws.root)
    assert killed_after > 0  # the time up to the last state survives the kill
    assert _drill(ws.root, second, resume=True) == -9
    assert _drill(ws.root, None, resume=True) == 0
    assert _stage_seconds(ws.root) > killed_after
    # run.json records each resume: from the newest state before each kill (states at 2, 3,
    # 4 and 6: every 2 steps and each epoch's end; a kill at step k comes before k's state)
    stage = json.loads((ws.root / "runs/run1/run.json").read_text())["stages"][0]
    resumed = [max(s for s in (2, 3, 4, 6) if s < kill) for kill in (first, second)]
    assert [r["step"] for r in stage["resumes"]] == resumed
    # and the report's loss curve has each step once: what a killed run logged after its
    # last state is dropped in favour of the resumed run's values
    from tagtune.report.runs import read_scalars

    steps = [s for s, _, _ in read_scalars(ws.root / "runs/run1/main/logs")["loss"]]
    assert steps == [1, 2, 3, 4, 5, 6]

    ref, lat = make_training_workspace(tmp_path / "ref", _recipe(weight_dtype), n=6)
    run_training(ref, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)
    assert "resumes" not in json.loads((ref.root / "runs/run1/run.json").read_text())["stages"][0]

    final = "runs/run1/main/states/step-6"
    for name in MODULES:
        a = load_file(ws.root / final / f"{name}.safetensors")
        b = load_file(ref.root / final / f"{name}.safetensors")
        assert a.keys() == b.keys()
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        assert diff == [], (name, first, second, diff[:3])
    opt_a = load_file(ws.root / final / "optimizer.safetensors")
    opt_b = load_file(ref.root / final / "optimizer.safetensors")
    assert all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)
    moments = {v.dtype for k, v in opt_a.items() if k.endswith("exp_avg")}
    assert moments == {torch.float32}  # fp32 moments, also beside bf16 weights
    weights = {v.dtype for v in load_file(ws.root / final / "unet.safetensors").values()}
    assert weights == {getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[weight_dtype])}
