"""EMA of the trained weights: what it averages, that it leaves training alone, resume, export."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from cli_main import run_cli
from tagtune.core.errors import TrainingError
from tagtune.recipe.model import StageConfig
from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
from tagtune.train.ema import WeightEMA, warmup_decay
from tagtune.train.export import export_model
from tagtune.train.memory import PARAMS, estimate_memory
from tagtune.train.stages import run_training

MODULES = ("unet", "text_encoder", "text_encoder_2")


def _recipe(decay: float, every: int = 3, device: str = "gpu"):
    # 8 images, 2 held out, batch 2: 3 steps per epoch, 6 steps; states at 3 and 6
    recipe = tiny_train_recipe(epochs=2, batch_size=2, shuffle_captions=True)
    recipe.train.ema_decay = decay
    recipe.train.ema_every_n_steps = every
    recipe.train.ema_device = device
    recipe.validation.count = 2
    return recipe


def _run(root, recipe, tiny_sdxl):
    ws, lat = make_training_workspace(root, recipe, n=8)
    run_training(ws, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)
    return ws


def _params(module):
    return {k: p.detach().clone() for k, p in module.named_parameters()}


def test_updates_follow_the_decay_every_n_steps_and_applied_restores_exactly():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    start = _params(net)
    ema = WeightEMA(0.9, every_n_steps=2, device="cpu")
    ema.start({"net": net}, None)
    expected = {k: v.clone() for k, v in start.items()}
    for step in range(1, 7):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.5)
        ema.update(step)
        if step % 2 == 0:
            d = warmup_decay(0.9, step // 2)
            expected = {k: d * v + (1 - d) * net.state_dict()[k] for k, v in expected.items()}
    assert all(torch.allclose(ema.shadow["net"][k], expected[k], atol=1e-6) for k in expected)
    assert warmup_decay(0.9, 1) == pytest.approx(2 / 11) and warmup_decay(0.9, 1000) == 0.9
    raw = _params(net)
    with ema.applied():
        assert all(torch.equal(p, ema.shadow["net"][k]) for k, p in net.named_parameters())
    assert all(torch.equal(p, raw[k]) for k, p in net.named_parameters())


def test_zero2_is_refused_clearly():
    with pytest.raises(TrainingError, match="not supported under DeepSpeed ZeRO-2"):
        WeightEMA(0.99).start({"net": torch.nn.Linear(2, 2)}, None, zero=True)


def test_dry_run_memory_counts_an_ema_on_the_gpu_only():
    recipe = tiny_train_recipe()
    stage = StageConfig(name="s", lr_text_encoder=0, lr_text_encoder_2=0)
    off = estimate_memory(stage, recipe.train)
    recipe.train.ema_decay = 0.999
    on = estimate_memory(stage, recipe.train)
    assert on.total - off.total == pytest.approx(PARAMS["unet"] * 4 / 1024**3)
    assert on.to_json()["ema"] > 0
    recipe.train.ema_device = "cpu"
    assert estimate_memory(stage, recipe.train).total == off.total
    own = StageConfig(name="s", lr_text_encoder=0, lr_text_encoder_2=0, ema_decay=0.0)
    recipe.train.ema_device = "gpu"
    assert estimate_memory(own, recipe.train).total == off.total  # the stage turns it off


@pytest.mark.slow
def test_ema_leaves_training_alone_drives_validation_and_exports_the_recomputed_average(
    tmp_path, tiny_sdxl, capsys
):
    ws = _run(tmp_path / "ema", _recipe(0.8), tiny_sdxl)
    plain = _run(tmp_path / "plain", _recipe(0.0), tiny_sdxl)
    states = ws.runs_dir / "run1" / "main" / "states"
    final = states / "step-6"
    # the trained weights are exactly those of a run without EMA
    for name in MODULES:
        a = load_file(final / f"{name}.safetensors")
        b = load_file(plain.runs_dir / "run1/main/states/step-6" / f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert not (plain.runs_dir / "run1/main/states/step-6/ema-unet.safetensors").exists()
    # the average, recomputed from the base and the states after every 3rd step
    for name in MODULES:
        ema = {k: v.detach().clone() for k, v in getattr(tiny_sdxl, name).named_parameters()}
        for step in (3, 6):
            w = load_file(states / f"step-{step}" / f"{name}.safetensors")
            d = warmup_decay(0.8, step // 3)
            ema = {k: d * v + (1 - d) * w[k] for k, v in ema.items()}
        saved = load_file(final / f"ema-{name}.safetensors")
        assert saved.keys() == ema.keys()
        assert all(torch.allclose(saved[k], ema[k], atol=1e-6) for k in ema), name
        raw = load_file(final / f"{name}.safetensors")
        assert any(not torch.allclose(saved[k], raw[k]) for k in ema), name

    # validation evaluates the averaged weights: same start, another end than without EMA
    def evaluations(w):
        run = json.loads((w.runs_dir / "run1/run.json").read_text())
        return run["stages"][0]["validation"]["evaluations"]

    with_ema, without = evaluations(ws), evaluations(plain)
    assert with_ema[0]["loss"] == without[0]["loss"]
    assert with_ema[-1]["loss"] != without[-1]["loss"]
    # export --ema writes the averages; the plain export the final weights
    comps = copy.deepcopy(tiny_sdxl)
    res = export_model(ws, dtype="fp32", components=comps, ema=True)
    assert res.path.name == "tagtune-sdxl-ema.safetensors"
    for name in MODULES:
        saved = load_file(final / f"ema-{name}.safetensors")
        assert all(torch.equal(p, saved[k]) for k, p in getattr(comps, name).named_parameters())
    raw = copy.deepcopy(tiny_sdxl)
    export_model(ws, dtype="fp32", components=raw)
    unet = load_file(final / "unet.safetensors")
    assert all(torch.equal(p, unet[k]) for k, p in raw.unet.named_parameters())
    with pytest.raises(TrainingError, match="kept no EMA"):
        export_model(plain, components=copy.deepcopy(tiny_sdxl), ema=True)
    res = run_cli(capsys, "export", plain.root, "--ema")
    assert res.code == 2
    assert res.error_lines[0].startswith("error: ") and "stage 'main' kept no EMA" in res.err


def _drill(root, kill_at: int | None, resume: bool) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TAGTUNE_KILL_AT_STEP": str(kill_at or 0)}
    cmd = [sys.executable, "-m", "tagtune.synthetic.runs", str(root)]
    if resume:
        cmd.append("--resume")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300).returncode


@pytest.mark.slow
def test_sigkill_and_resume_with_ema_and_samples_every_step_is_bit_identical(tmp_path, tiny_sdxl):
    """Killed and resumed, sampling every step from the averages: the weights and the
    averages end bit-identical to an uninterrupted run that never sampled."""
    recipe = _recipe(0.9, every=1, device="cpu")  # 6 images: 3 steps per epoch, 6 steps
    recipe.validation.enabled = False
    recipe.train.save_every_n_steps = 2
    recipe.train.sample_every_n_steps = 1
    recipe.train.sample_prompts = ["1girl, smile"]
    recipe.train.sample_steps = 1
    recipe.train.sample_size = (64, 64)
    killed, _ = make_training_workspace(tmp_path / "killed", recipe, n=6)
    assert _drill(killed.root, 5, resume=False) == -9  # resumes from the state at step 4
    assert _drill(killed.root, None, resume=True) == 0
    samples = killed.runs_dir / "run1" / "main" / "samples"
    assert {p.name for p in samples.iterdir()} == {f"step-{s:06d}" for s in range(1, 7)}
    quiet = recipe.model_copy(deep=True)
    quiet.train.sample_every_n_steps = 0
    ref, lat = make_training_workspace(tmp_path / "ref", quiet, n=6)
    run_training(ref, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)
    final = "runs/run1/main/states/step-6"
    for name in (*MODULES, *(f"ema-{m}" for m in MODULES)):
        a = load_file(killed.root / final / f"{name}.safetensors")
        b = load_file(ref.root / final / f"{name}.safetensors")
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], name


def test_resuming_a_state_without_ema_or_with_other_settings_is_refused(tmp_path):
    from tagtune.train.state import save_state

    net = torch.nn.Linear(2, 2)
    plain = save_state(tmp_path, 1, {"net": net}, None, {"ema": None}, [])
    with pytest.raises(TrainingError, match="the state kept no EMA; the recipe now asks for"):
        WeightEMA(0.99).start({"net": net}, plain)
    ema = WeightEMA(0.99, every_n_steps=2)
    ema.start({"net": net}, None)
    kept = save_state(
        tmp_path, 2, {"net": net, **ema.state_tensors()}, None, {"ema": ema.meta()}, []
    )
    with pytest.raises(TrainingError, match="kept EMA decay 0.99 every 2 steps; the recipe now"):
        WeightEMA(0.999, every_n_steps=2).start({"net": net}, kept)
    again = WeightEMA(0.99, every_n_steps=2, device="cpu")
    again.start({"net": net}, kept)
    assert all(torch.equal(again.shadow["net"][k], v) for k, v in ema.shadow["net"].items())
