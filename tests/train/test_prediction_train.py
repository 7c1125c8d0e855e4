"""Training a v-prediction / zero-terminal-SNR model: the schedule, the loss, the run record,
and a tiny v + zero-terminal-SNR base through train, export, generate and convert."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prediction_models import V_ZTSNR, as_model, write_prediction_files
from tagtune.models.prediction import (
    Prediction,
    apply,
)
from tagtune.models.safetensors_io import read_header
from tagtune.models.save import save_single_file
from tagtune.train.loss import diffusion_loss, min_snr_weights, training_scheduler


@pytest.fixture(scope="module")
def v_files(tiny_sdxl, tmp_path_factory):
    """The tiny model as v + ztsnr, v and epsilon single files (fp16)."""
    return write_prediction_files(tiny_sdxl, tmp_path_factory.mktemp("pred"))


# --- training: the v target, min-SNR for v, the zero-terminal-SNR schedule ------------


def test_zero_terminal_snr_schedule_ends_in_pure_noise():
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    from tagtune.models.tiny import SCHEDULER_CONFIG

    sched = training_scheduler(apply(SCHEDULER_CONFIG, V_ZTSNR))
    assert sched.config.prediction_type == "v_prediction"
    assert sched.alphas_cumprod[-1] == 0
    assert torch.allclose(
        sched.betas, rescale_zero_terminal_snr(training_scheduler(SCHEDULER_CONFIG).betas)
    )
    assert training_scheduler(SCHEDULER_CONFIG).alphas_cumprod[-1] > 0  # epsilon unchanged


def test_min_snr_weights_at_snr_zero_are_finite():
    from tagtune.models.tiny import SCHEDULER_CONFIG

    a = training_scheduler(apply(SCHEDULER_CONFIG, V_ZTSNR)).alphas_cumprod
    t = torch.tensor([0, 500, 999])
    v = min_snr_weights(a, t, 5.0, "v_prediction")
    eps = min_snr_weights(a, t, 5.0, "epsilon")
    assert torch.isfinite(v).all() and torch.isfinite(eps).all()
    assert v[-1] == 0 and eps[-1] == 1
    snr = a[t] / (1 - a[t])
    assert torch.allclose(v, torch.clamp(snr, max=5.0) / (snr + 1))


class Oracle(torch.nn.Module):
    """A 'U-Net' that returns a fixed prediction."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, *args, **kwargs):
        return type("Out", (), {"sample": self.out})()


def test_the_v_loss_targets_velocity_and_stays_finite_at_the_last_timestep():
    from tagtune.models.tiny import SCHEDULER_CONFIG

    sched = training_scheduler(apply(SCHEDULER_CONFIG, V_ZTSNR))
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    noise = noise + 0.1 * torch.randn(2, 4, 1, 1, generator=gen)  # with a noise offset
    t = torch.tensor([999, 999])
    velocity = sched.get_velocity(latents, noise, t)
    assert torch.allclose(velocity, -latents)  # alpha_bar = 0: v = -x0
    cond = (torch.zeros(2, 3, 8), torch.zeros(2, 8), torch.zeros(2, 6))
    exact = diffusion_loss(Oracle(velocity), sched, latents, noise, t, *cond, min_snr_gamma=5.0)
    assert torch.equal(exact, torch.zeros(2))
    wrong = diffusion_loss(Oracle(noise), sched, latents, noise, t, *cond)  # epsilon's target
    assert torch.isfinite(wrong).all() and (wrong > 0.5).all()
    gamma = diffusion_loss(Oracle(noise), sched, latents, noise, t, *cond, min_snr_gamma=5.0)
    assert torch.isfinite(gamma).all()


# --- end to end: a tiny v + zero-terminal-SNR base through train, export, generate, convert


@pytest.mark.slow
def test_a_v_ztsnr_base_goes_through_train_export_generate_and_convert(
    tmp_path, tiny_sdxl, v_files, monkeypatch
):
    from test_train_cli import _cache_latents
    from typer.testing import CliRunner

    import tagtune.train.loop as loop
    from tagtune.card import render_card
    from tagtune.cli.main import app
    from tagtune.generate.infotext import read_png_infotext
    from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe

    schedules = []
    real = loop.training_scheduler

    def spy(*args, **kwargs):
        schedules.append(real(*args, **kwargs))
        return schedules[-1]

    monkeypatch.setattr(loop, "training_scheduler", spy)
    recipe = tiny_train_recipe(
        epochs=1, batch_size=2, lr_text_encoder=0.0, lr_text_encoder_2=0.0, min_snr_gamma=5.0,
        noise_offset=0.05,
    )  # fmt: skip
    recipe.model.base = "base.safetensors"  # prediction_type and zero_terminal_snr: auto
    recipe.train.sample_prompts = ["1girl, blue sky"]
    recipe.train.sample_every_n_epochs = 1
    recipe.train.sample_steps = 2
    recipe.train.sample_size = (64, 64)
    ws, _ = make_training_workspace(tmp_path / "ws", recipe, n=4)
    save_single_file(as_model(tiny_sdxl, V_ZTSNR), ws.root / "base.safetensors", dtype="fp32")
    _cache_latents(ws, tiny_sdxl, 4)
    runner = CliRunner()

    res = runner.invoke(app, ["train", str(ws.root), "--json"])
    assert res.exit_code == 0, res.output
    (sched,) = schedules  # the training noise schedule: v target, alpha_bar(T) = 0
    assert sched.config.prediction_type == "v_prediction" and sched.alphas_cumprod[-1] == 0
    run = json.loads((ws.runs_dir / "run1" / "run.json").read_text())
    assert run["prediction"] == {"prediction_type": "v_prediction", "zero_terminal_snr": True}
    assert all(math.isfinite(s["final_loss"]) for s in run["stages"])
    sample = read_png_infotext(ws.runs_dir / "run1" / "main" / "samples" / "epoch-001" / "00.png")
    assert (sample.prediction_type, sample.zero_terminal_snr) == ("v_prediction", True)

    res = runner.invoke(app, ["export", str(ws.root), "--json"])
    assert res.exit_code == 0, res.output
    export = ws.out_dir / "tagtune-sdxl.safetensors"
    header = read_header(export)
    assert {"v_pred", "ztsnr"} <= set(header.tensors)
    assert header.metadata["modelspec.prediction_type"] == "v"
    run = json.loads((ws.runs_dir / "run1" / "run.json").read_text())
    assert run["export"]["prediction"]["prediction_type"] == "v_prediction"
    card = render_card(run, ("all", ["blue sky"]), export.name, run["export"]["hashes"])
    assert "| Prediction | v-prediction, zero terminal SNR |" in card

    out = tmp_path / "images"
    res = runner.invoke(app, [
        "generate", str(export), "1girl", "--steps", "2", "--size", "64x64", "-n", "1",
        "--sampler", "euler", "--cfg-rescale", "0.7", "--out", str(out), "--json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    info = read_png_infotext(json.loads(res.output)["images"][0])
    assert (info.prediction_type, info.zero_terminal_snr, info.cfg_rescale) == (
        "v_prediction", True, 0.7,
    )  # fmt: skip

    folder = tmp_path / "converted"
    res = runner.invoke(app, ["convert", str(export), str(folder), "--json"])
    assert res.exit_code == 0, res.output
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["prediction_type"], sched["rescale_betas_zero_snr"]) == ("v_prediction", True)


def test_a_run_is_not_continued_as_another_prediction_type(tmp_path):
    from tagtune.core.errors import TrainingError
    from tagtune.train.prediction_record import check_same_prediction

    epsilon_run = {"stages": [{"name": "main"}]}  # recorded before, or as epsilon
    check_same_prediction(epsilon_run, Prediction(), tmp_path)
    with pytest.raises(TrainingError, match="trained as epsilon, .* give v_prediction, zero"):
        check_same_prediction(epsilon_run, V_ZTSNR, tmp_path)
    v_run = {**epsilon_run, "prediction": V_ZTSNR.to_json()}
    check_same_prediction(v_run, V_ZTSNR, tmp_path)
    with pytest.raises(TrainingError, match="trained as v_prediction, zero terminal SNR"):
        check_same_prediction(v_run, Prediction("v_prediction"), tmp_path)
    check_same_prediction({"stages": []}, V_ZTSNR, tmp_path)  # nothing trained yet
