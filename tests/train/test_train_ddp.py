"""Two CPU processes (gloo) train in step with each other and like one process with the same global batch."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from drills import assert_like_one_process
from tagtune.synthetic.runs import free_port, make_training_workspace, tiny_train_recipe
from tagtune.train.stages import run_training


@pytest.mark.slow
def test_two_processes_stay_in_sync_and_match_one_process(tmp_path, tiny_sdxl):
    # 2 processes x batch 2 vs 1 process x batch 4: the same 2 global batches of 4
    two, _ = make_training_workspace(
        tmp_path / "two", tiny_train_recipe(epochs=1, batch_size=2, lr_text_encoder_2=0.0), n=8
    )
    dump = tmp_path / "dump"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()),
        "-m", "tagtune.synthetic.runs", str(two.root), "--dump-weights", str(dump),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one, lat = make_training_workspace(
        tmp_path / "one", tiny_train_recipe(epochs=1, batch_size=4, lr_text_encoder_2=0.0), n=8
    )
    single = copy.deepcopy(tiny_sdxl)
    run_training(one, components=single, latents=lat, progress=False)

    run_two = json.loads((two.root / "runs/run1/run.json").read_text())["stages"][0]
    run_one = json.loads((one.root / "runs/run1/run.json").read_text())["stages"][0]
    assert (run_two["steps"], run_two["images"]) == (run_one["steps"], run_one["images"]) == (2, 8)
    assert run_two["final_loss"] == pytest.approx(run_one["final_loss"], rel=1e-6)
    for name in ("unet", "text_encoder"):
        r0 = load_file(dump / f"{name}-rank0.safetensors")
        r1 = load_file(dump / f"{name}-rank1.safetensors")
        assert all(torch.equal(r0[k], r1[k]) for k in r0), f"{name}: ranks diverged"
        assert_like_one_process(r0, getattr(single, name), getattr(tiny_sdxl, name), name)
