"""DeepSpeed ZeRO-2 under `accelerate launch`: two CPU processes (gloo) train like one process,
stay in sync, write per-process shards, and resume bit-identically after SIGKILL."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from drills import assert_like_one_process
from tagtune.core.errors import TrainingError
from tagtune.synthetic.runs import free_port, make_training_workspace, tiny_train_recipe
from tagtune.train.stages import run_training
from tagtune.train.zero import check_zero_state, deepspeed_config

ACCELERATE_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: 2
  gradient_accumulation_steps: 1
  gradient_clipping: 1.0
  offload_optimizer_device: none
  offload_param_device: none
mixed_precision: 'no'
num_machines: 1
num_processes: 2
use_cpu: true
"""

# 9 images, 2 processes x batch 2 (global batch 4), accumulation 2: per epoch the global
# batches are 4, 4, 1 and the steps [4 + 4], [1]; in the short step process 0 has no image.
N_IMAGES = 9


def _recipe(batch_size: int):
    recipe = tiny_train_recipe(
        epochs=2, batch_size=batch_size, gradient_accumulation=2, lr_text_encoder_2=0.0
    )
    recipe.train.save_every_n_steps = 1
    recipe.train.keep_last = 5
    return recipe


def _launch(tmp: Path, ws_root: Path, *args: str, kill_at: int = 0) -> subprocess.CompletedProcess:
    config = tmp / "zero2.yaml"
    config.write_text(ACCELERATE_CONFIG)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
        "--main_process_port", str(free_port()),
        "-m", "tagtune.synthetic.runs", str(ws_root), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TAGTUNE_KILL_AT_STEP": str(kill_at)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def zero_run(tmp_path_factory):
    """One uninterrupted ZeRO-2 run of 2 processes: its workspace and each rank's weights."""
    pytest.importorskip("deepspeed")
    tmp = tmp_path_factory.mktemp("zero")
    ws, _ = make_training_workspace(tmp / "ws", _recipe(batch_size=2), n=N_IMAGES)
    proc = _launch(tmp, ws.root, "--dump-weights", str(tmp / "dump"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return ws.root, tmp / "dump"


def _state(root: Path, step: int) -> Path:
    return root / "runs/run1/main/states" / f"step-{step}"


@pytest.mark.slow
def test_zero2_two_processes_stay_in_sync_and_match_one_process(zero_run, tmp_path, tiny_sdxl):
    root, dump = zero_run
    one, lat = make_training_workspace(tmp_path / "one", _recipe(batch_size=4), n=N_IMAGES)
    single = copy.deepcopy(tiny_sdxl)
    run_training(one, components=single, latents=lat, progress=False)

    run_zero = json.loads((root / "runs/run1/run.json").read_text())["stages"][0]
    run_one = json.loads((one.root / "runs/run1/run.json").read_text())["stages"][0]
    assert (
        (run_zero["steps"], run_zero["images"]) == (run_one["steps"], run_one["images"]) == (4, 9)
    )
    assert run_zero["final_loss"] == pytest.approx(run_one["final_loss"], rel=1e-5)
    final = _state(root, 4)
    assert {p.name for p in final.glob("zero-rank-*")} == {
        "zero-rank-0.safetensors", "zero-rank-0.json", "zero-rank-1.safetensors", "zero-rank-1.json",
    }  # fmt: skip
    assert not (final / "optimizer.safetensors").exists()
    assert json.loads((final / "state.json").read_text())["zero_world_size"] == 2
    for name in ("unet", "text_encoder"):
        r0 = load_file(dump / f"{name}-rank0.safetensors")
        r1 = load_file(dump / f"{name}-rank1.safetensors")
        saved = load_file(final / f"{name}.safetensors")
        assert all(torch.equal(r0[k], r1[k]) for k in r0), f"{name}: ranks diverged"
        assert all(torch.equal(r0[k], saved[k]) for k in r0), f"{name}: state != final weights"
        assert_like_one_process(r0, getattr(single, name), getattr(tiny_sdxl, name), name)
    # the frozen encoder was never touched
    te2 = load_file(dump / "text_encoder_2-rank0.safetensors")
    assert all(torch.equal(v, tiny_sdxl.text_encoder_2.state_dict()[k]) for k, v in te2.items())


@pytest.mark.slow
def test_zero2_sigkill_then_resume_is_bit_identical(zero_run, tmp_path):
    root, _ = zero_run
    ws, _ = make_training_workspace(tmp_path / "killed", _recipe(batch_size=2), n=N_IMAGES)
    killed = _launch(tmp_path, ws.root, kill_at=3)
    assert killed.returncode != 0
    assert (_state(ws.root, 2) / "COMPLETE").is_file()
    assert not _state(ws.root, 4).exists()
    resumed = _launch(tmp_path, ws.root, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    a, b = _state(ws.root, 4), _state(root, 4)
    files = sorted(p.name for p in b.glob("*.safetensors"))
    assert files == sorted(p.name for p in a.glob("*.safetensors"))
    for file in files:
        if file == "rng.safetensors":
            continue
        ta, tb = load_file(a / file), load_file(b / file)
        assert ta.keys() == tb.keys()
        diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert diff == [], (file, diff[:3])


def test_deepspeed_config_takes_the_numbers_from_the_recipe():
    stage = _recipe(batch_size=3).train.stages[0]
    stage.max_grad_norm = 0.5
    base = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": 8,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto", "overlap_comm": True},
    }
    config = deepspeed_config(base, stage, "bf16", world_size=4)
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 3 * 2 * 4
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["zero_optimization"] == {"stage": 2, "overlap_comm": True}  # "auto" dropped
    assert base["zero_optimization"]["reduce_bucket_size"] == "auto"  # input left alone


def test_deepspeed_config_refuses_other_zero_stages_and_fp16():
    stage = _recipe(batch_size=2).train.stages[0]
    with pytest.raises(TrainingError) as err:
        deepspeed_config({"zero_optimization": {"stage": 3}}, stage, "bf16", 2)
    assert str(err.value).startswith("deepspeed_config.zero_stage = 3: DeepSpeed ZeRO stage 3")
    assert "(allowed: 2)" in str(err.value)
    with pytest.raises(TrainingError) as err:
        deepspeed_config({"zero_optimization": {"stage": 2}}, stage, "fp16", 2)
    assert str(err.value).startswith("train.mixed_precision = 'fp16': DeepSpeed runs use bf16")


def test_a_state_resumes_only_under_the_scheme_that_wrote_it(tmp_path):
    check_zero_state({}, None, tmp_path)
    check_zero_state({"zero_world_size": 4}, 4, tmp_path)
    cases = {
        (None, 2): "without DeepSpeed; this run uses DeepSpeed ZeRO-2",
        (2, None): "by DeepSpeed ZeRO-2 with 2 processes; this run does not use DeepSpeed",
        (2, 4): "by DeepSpeed ZeRO-2 with 2 processes; this run has 4",
    }
    for (saved, now), words in cases.items():
        with pytest.raises(TrainingError) as err:
            check_zero_state({"zero_world_size": saved}, now, tmp_path)
        assert words in str(err.value)


BF16_SCRIPT = """
import os, sys
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
import deepspeed, torch
from tagtune.train.zero import ZeroEngine
deepspeed.init_distributed(auto_mpi_discovery=False, verbose=False)
torch.manual_seed(0)
a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
opt = torch.optim.AdamW([{"params": list(a.parameters()), "lr": 1e-2},
                         {"params": list(b.parameters()), "lr": 1e-2}])
config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "train_batch_size": 1, "zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
          "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
zero = ZeroEngine({"a": a, "b": b}, opt, config, 1)
assert a.weight.dtype == torch.bfloat16
for _ in range(3):
    zero.backward(b(a(torch.randn(2, 4, dtype=torch.bfloat16))).float().pow(2).mean(), True)
    zero.step()
master = zero.full_weights()["a"]["weight"]
assert master.dtype == torch.float32 and not torch.equal(master, master.bfloat16().float())
zero.finish()
assert a.weight.dtype == torch.float32 and torch.equal(a.weight, master), "not the fp32 master"
print("ok")
"""


@pytest.mark.slow
def test_bf16_stage_ends_with_the_fp32_master_weights_in_the_modules(tmp_path):
    """Under bf16 DeepSpeed holds the modules in bf16; the stage hands on full precision."""
    pytest.importorskip("deepspeed")
    script = tmp_path / "bf16.py"
    script.write_text(BF16_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(free_port())],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
