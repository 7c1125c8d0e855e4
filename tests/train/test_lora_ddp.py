"""A LoRA stage on two CPU processes (gloo) trains like one process with the same global batch."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from drills import assert_like_one_process
from tagtune.synthetic.runs import free_port, make_training_workspace, tiny_train_recipe
from tagtune.train.stages import run_training


def _recipe(batch_size: int):
    return tiny_train_recipe(
        epochs=1, batch_size=batch_size, method="lora", lora={"rank": 4},
        lr_unet=1e-2, lr_text_encoder=1e-3, lr_text_encoder_2=0.0,
    )  # fmt: skip


@pytest.mark.slow
def test_two_processes_train_a_lora_like_one_process(tmp_path, tiny_sdxl):
    # 2 processes x batch 2 vs 1 process x batch 4: the same 2 global batches of 4
    two, _ = make_training_workspace(tmp_path / "two", _recipe(2), n=8)
    dump = tmp_path / "dump"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()),
        "-m", "tagtune.synthetic.runs", str(two.root), "--dump-weights", str(dump),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one, lat = make_training_workspace(tmp_path / "one", _recipe(4), n=8)
    single = copy.deepcopy(tiny_sdxl)
    run_training(one, components=single, latents=lat, progress=False)

    # the states: the LoRA of both runs, alike to float summation order
    for name in ("unet", "text_encoder"):
        a = load_file(two.root / "runs/run1/main/states/step-2" / f"{name}.safetensors")
        b = load_file(one.root / "runs/run1/main/states/step-2" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(".lora_" in k for k in a)
        moved = sum((b[k].float()).abs().sum() for k in b if ".lora_B." in k)
        diff = sum((a[k] - b[k]).abs().sum() for k in b if ".lora_B." in k)
        assert moved > 0 and diff < 1e-3 * moved, name
    # the weights each process ends with (the LoRA merged): the same on both ranks, and as
    # one process's
    for name in ("unet", "text_encoder"):
        r0 = load_file(dump / f"{name}-rank0.safetensors")
        r1 = load_file(dump / f"{name}-rank1.safetensors")
        assert all(torch.equal(r0[k], r1[k]) for k in r0), f"{name}: ranks diverged"
        assert_like_one_process(r0, getattr(single, name), getattr(tiny_sdxl, name), name)
