"""v-prediction and zero-terminal-SNR models: what a base states, the recipe against it, the
training schedule and loss, sampling, infotext, export markers, convert and merge."""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import torch

from tagtune.errors import InputError, ModelFileError, RecipeError
from tagtune.infotext import Infotext, format_infotext, parse_infotext
from tagtune.models.load import load_model
from tagtune.models.prediction import (
    Claim,
    Prediction,
    apply,
    components_prediction,
    read_file_claim,
    read_folder_claim,
    resolve,
)
from tagtune.models.safetensors_io import read_header
from tagtune.models.save import save_diffusers, save_single_file
from tagtune.recipe import parse_recipe
from tagtune.train.loss import diffusion_loss, min_snr_weights, training_scheduler

V_ZTSNR = Prediction("v_prediction", True)


def as_model(tiny_sdxl, prediction: Prediction):
    """A copy of the tiny model whose scheduler config says `prediction`."""
    comps = copy.copy(tiny_sdxl)
    comps.scheduler_config = apply(tiny_sdxl.scheduler_config, prediction)
    return comps


@pytest.fixture(scope="module")
def v_files(tiny_sdxl, tmp_path_factory):
    """The tiny model as v + ztsnr, v and epsilon single files (fp16)."""
    root = tmp_path_factory.mktemp("pred")
    out = {}
    for name, p in (
        ("v_ztsnr", V_ZTSNR),
        ("v", Prediction("v_prediction", False)),
        ("eps", Prediction()),
    ):
        out[name] = save_single_file(as_model(tiny_sdxl, p), root / f"{name}.safetensors")
    return out


# --- what a base states, and the recipe against it ------------------------------------


def test_markers_win_then_modelspec_then_nothing():
    assert read_file_claim(["v_pred", "ztsnr", "x"], {}).prediction_type == "v_prediction"
    assert read_file_claim(["v_pred", "ztsnr"], {}).zero_terminal_snr is True
    assert read_file_claim(["v_pred"], {}).zero_terminal_snr is False  # as ComfyUI samples it
    spec = {"modelspec.prediction_type": "v"}
    assert read_file_claim(["x"], spec) == Claim(
        "v_prediction", "says modelspec.prediction_type = 'v'"
    )
    assert read_file_claim(
        ["v_pred"], {"modelspec.prediction_type": "epsilon"}
    ).prediction_type == ("v_prediction")
    assert read_file_claim(["x"], {}) == Claim()
    folder = read_folder_claim({"prediction_type": "v_prediction", "rescale_betas_zero_snr": True})
    assert (folder.prediction_type, folder.zero_terminal_snr) == ("v_prediction", True)
    assert read_folder_claim({}) == Claim()


def test_recipe_keys_default_to_auto_and_old_recipes_keep_working():
    model = parse_recipe({}).model
    assert (model.prediction_type, model.zero_terminal_snr) == ("auto", "auto")
    old = parse_recipe({"schema_version": 1, "model": {"prediction_type": "epsilon"}}).model
    assert old.prediction_type == "epsilon"
    assert parse_recipe({"model": {"zero_terminal_snr": True}}).model.zero_terminal_snr is True
    for bad in ("yes", 1):
        with pytest.raises(RecipeError, match="model.zero_terminal_snr"):
            parse_recipe({"model": {"zero_terminal_snr": bad}})


def test_auto_follows_the_base_and_a_contradiction_names_both():
    v = Claim("v_prediction", "has the 'v_pred' marker", True, "has the 'ztsnr' marker")
    assert resolve("auto", "auto", v, "base.safetensors") == V_ZTSNR
    assert resolve("auto", "auto", Claim(), "b") == Prediction()
    assert resolve("v_prediction", True, Claim(), "b") == V_ZTSNR  # the base says nothing
    with pytest.raises(RecipeError) as exc:
        resolve("epsilon", "auto", v, "base.safetensors", "tagtune.toml")
    text = str(exc.value)
    assert "\n" not in text
    assert "model.prediction_type = 'epsilon'" in text
    assert "base.safetensors has the 'v_pred' marker" in text
    with pytest.raises(RecipeError, match="model.zero_terminal_snr = False.*'ztsnr' marker"):
        resolve("auto", False, v, "base.safetensors")
    with pytest.raises(RecipeError, match="needs a v-prediction model"):
        resolve("epsilon", True, Claim(), "b")


def test_the_recipe_model_follows_a_v_base_and_refuses_a_contradiction(tmp_path, v_files):
    from tagtune.models.recipe_model import load_recipe_model
    from tagtune.workspace import init_workspace

    recipe = parse_recipe({"model": {"base": str(v_files["v_ztsnr"])}})
    ws = init_workspace(tmp_path / "ws", recipe)
    comps = load_recipe_model(ws, tokenizers=False)
    assert components_prediction(comps) == V_ZTSNR
    assert comps.scheduler_config["timestep_spacing"] == "trailing"
    recipe.model.prediction_type = "epsilon"
    with pytest.raises(RecipeError) as exc:
        load_recipe_model(ws, recipe, tokenizers=False)
    assert str(exc.value).count("\n") == 0
    assert "model.prediction_type = 'epsilon'" in str(exc.value)
    assert "v_ztsnr.safetensors has the 'v_pred' marker" in str(exc.value)


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


# --- export, convert, diffusers' own loader ------------------------------------------


def test_export_carries_the_markers_and_modelspec(v_files):
    headers = {k: read_header(p) for k, p in v_files.items()}
    marks = {
        k: sorted(n for n in h.tensors if n in ("v_pred", "ztsnr")) for k, h in headers.items()
    }
    assert marks == {"v_ztsnr": ["v_pred", "ztsnr"], "v": ["v_pred"], "eps": []}
    assert headers["v_ztsnr"].tensors["v_pred"].shape == (0,)
    spec = {k: h.metadata["modelspec.prediction_type"] for k, h in headers.items()}
    assert spec == {"v_ztsnr": "v", "v": "v", "eps": "epsilon"}
    assert len(headers["eps"].tensors) == 2513 and len(headers["v_ztsnr"].tensors) == 2515


def test_the_markers_override_a_stored_epsilon_config(v_files, tmp_path, tiny_sdxl):
    """A file whose stored scheduler config says epsilon (as the packaged SDXL config a
    file from another tool is loaded with does): its markers or ModelSpec key decide."""
    from tagtune.models.configs import METADATA_KEY
    from tagtune.models.safetensors_io import load_tensors, write_safetensors
    from tagtune.models.tiny import SCHEDULER_CONFIG

    tok = (tiny_sdxl.tokenizer, tiny_sdxl.tokenizer_2)
    tensors, meta = load_tensors(v_files["v_ztsnr"])
    configs = json.loads(meta[METADATA_KEY])
    configs["scheduler"] = SCHEDULER_CONFIG
    stored = {METADATA_KEY: json.dumps(configs)}
    foreign = tmp_path / "foreign.safetensors"
    write_safetensors(foreign, tensors, stored)
    loaded = load_model(foreign, tokenizers=tok)
    assert components_prediction(loaded) == V_ZTSNR
    assert loaded.scheduler_config["timestep_spacing"] == "trailing"
    del tensors["v_pred"], tensors["ztsnr"]
    spec_only = tmp_path / "spec.safetensors"
    write_safetensors(spec_only, tensors, {**stored, "modelspec.prediction_type": "v"})
    assert components_prediction(load_model(spec_only, tokenizers=tok)) == Prediction(
        "v_prediction"
    )


@pytest.mark.slow
def test_single_file_to_diffusers_to_single_file_keeps_it(v_files, tmp_path, tiny_sdxl):
    from tagtune.models.convert import convert_model

    tok = (tiny_sdxl.tokenizer, tiny_sdxl.tokenizer_2)
    folder = tmp_path / "v-diffusers"
    convert_model(v_files["v_ztsnr"], folder)
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"
    assert sched["rescale_betas_zero_snr"] is True and sched["timestep_spacing"] == "trailing"
    back = tmp_path / "back.safetensors"
    convert_model(folder, back)
    header = read_header(back)
    assert {"v_pred", "ztsnr"} <= set(header.tensors)
    assert header.metadata["modelspec.prediction_type"] == "v"
    assert components_prediction(load_model(back, tokenizers=tok)) == V_ZTSNR
    eps_folder = tmp_path / "eps-diffusers"
    convert_model(v_files["eps"], eps_folder)
    eps = json.loads((eps_folder / "scheduler" / "scheduler_config.json").read_text())
    assert eps["prediction_type"] == "epsilon" and "rescale_betas_zero_snr" not in eps


@pytest.mark.slow
def test_diffusers_single_file_loader_gets_v_from_our_config_folder(v_files, tmp_path, tiny_sdxl):
    """diffusers' from_single_file reads no marker: the scheduler comes from `config=` (our
    convert output carries it) or the deprecated `prediction_type=` argument."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import logging as dlogging

    from tagtune.models.convert import convert_model

    v_folder = tmp_path / "v"
    convert_model(v_files["v_ztsnr"], v_folder)
    messages: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = dlogging.get_logger("diffusers")
    handler = Capture(level=logging.DEBUG)
    logger.addHandler(handler)
    try:
        pipe = StableDiffusionXLPipeline.from_single_file(
            str(v_files["v_ztsnr"]), config=str(v_folder), local_files_only=True
        )
    finally:
        logger.removeHandler(handler)
    words = ("not used", "unexpected", "v_pred", "ztsnr")
    assert [m for m in messages if any(w in m.lower() for w in words)] == []  # markers: quiet
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.rescale_betas_zero_snr is True
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    eps_folder = save_diffusers(tiny_sdxl, tmp_path / "eps")
    pipe = StableDiffusionXLPipeline.from_single_file(
        str(v_files["v_ztsnr"]), config=str(eps_folder), local_files_only=True
    )
    assert pipe.scheduler.config.prediction_type == "epsilon"  # the file's markers are not read


# --- sampling --------------------------------------------------------------------------


def _image(comps, sampler="euler", **kw):
    from tagtune.generate import build_pipeline, prompt_embeddings, render

    pipe = build_pipeline(comps, sampler, device="cpu")
    emb = prompt_embeddings(comps, "1girl, blue sky", "worst quality")
    return torch.tensor(list(render(pipe, emb, 5, 3, 7.0, 64, 64, **kw).getdata())).float()


def test_the_scheduler_follows_the_model(tiny_sdxl):
    from tagtune.generate import build_pipeline, make_scheduler

    v = as_model(tiny_sdxl, V_ZTSNR)
    cfg = build_pipeline(v, "euler", device="cpu").scheduler.config
    assert (cfg.prediction_type, cfg.rescale_betas_zero_snr, cfg.timestep_spacing) == (
        "v_prediction", True, "trailing",
    )  # fmt: skip
    assert build_pipeline(tiny_sdxl, "euler", device="cpu").scheduler.config.prediction_type == (
        "epsilon"
    )
    with pytest.raises(InputError, match="cannot sample a zero-terminal-SNR model"):
        make_scheduler("heun", v.scheduler_config)


def test_generate_samples_a_v_model_as_v(tiny_sdxl, tmp_path):
    """The right scheduler and an epsilon one give different images; generate uses the right one."""
    from PIL import Image

    from tagtune.generate import LoadedModel, generate
    from tagtune.infotext import read_png_infotext

    v = as_model(tiny_sdxl, V_ZTSNR)
    as_eps = as_model(tiny_sdxl, Prediction())  # the same weights sampled as epsilon
    right, wrong = _image(v), _image(as_eps)
    assert not torch.equal(right, wrong)
    out = generate(
        LoadedModel(v, "tiny-v", ""), "1girl, blue sky", "worst quality", steps=3, cfg=7.0,
        sampler="euler", seed=5, size="64x64", out_dir=tmp_path,
    )  # fmt: skip
    with Image.open(out[0]) as im:
        made = torch.tensor(list(im.convert("RGB").getdata())).float()
    assert torch.equal(made, right)
    info = read_png_infotext(out[0])
    assert (info.prediction_type, info.zero_terminal_snr) == ("v_prediction", True)


def test_cfg_rescale_changes_the_image_and_is_recorded(tiny_sdxl, tmp_path):
    from tagtune.generate import LoadedModel, generate, params_from_png

    v = as_model(tiny_sdxl, V_ZTSNR)
    assert not torch.equal(_image(v), _image(v, cfg_rescale=0.7))
    out = generate(
        LoadedModel(v, "tiny-v", ""), "1girl", steps=2, sampler="euler", seed=1,
        size="64x64", out_dir=tmp_path, cfg_rescale=0.7,
    )  # fmt: skip
    assert "CFG Rescale: 0.7" in out[0].read_bytes().decode("latin-1")
    assert params_from_png(out[0])["cfg_rescale"] == 0.7
    with pytest.raises(InputError, match="cfg_rescale"):
        generate(LoadedModel(v, "t", ""), "1girl", size="64x64", out_dir=tmp_path, cfg_rescale=2)


def test_infotext_fields_for_v_models_and_none_for_epsilon():
    v = Infotext(
        "1girl", seed=1, cfg_rescale=0.7, prediction_type="v_prediction", zero_terminal_snr=True
    )
    line = format_infotext(v).splitlines()[-1]
    assert line.endswith(
        "CFG Rescale: 0.7, Noise Schedule: Zero Terminal SNR, Prediction type: v_prediction"
    )
    back = parse_infotext(format_infotext(v))
    assert (back.cfg_rescale, back.prediction_type, back.zero_terminal_snr) == (
        0.7, "v_prediction", True,
    )  # fmt: skip
    assert back.extra == {}
    eps = format_infotext(Infotext("1girl", seed=1))
    assert "Rescale" not in eps and "Noise Schedule" not in eps and "Prediction" not in eps
    for key in ("CFG Rescale φ", "CFG Rescale phi", "Rescale CFG"):
        text = f"1girl\nSteps: 20, Sampler: Euler, CFG scale: 5, Seed: 1, {key}: 0.5"
        assert parse_infotext(text).cfg_rescale == 0.5


# --- merge -----------------------------------------------------------------------------


def test_merge_keeps_agreeing_markers_and_refuses_disagreeing_parents(v_files, tmp_path):
    from tagtune.merge import MergeSpec, merge_checkpoints

    spec = MergeSpec(alpha=0.5)
    out = tmp_path / "vv.safetensors"
    merge_checkpoints(v_files["v_ztsnr"], v_files["v_ztsnr"], out, spec, hash_parents=False)
    header = read_header(out)
    assert {"v_pred", "ztsnr"} <= set(header.tensors)
    assert header.metadata["modelspec.prediction_type"] == "v"
    for other in ("eps", "v"):
        with pytest.raises(ModelFileError) as exc:
            merge_checkpoints(v_files["v_ztsnr"], v_files[other], tmp_path / "x.safetensors", spec)
        text = str(exc.value)
        assert "v_ztsnr.safetensors is v_prediction, zero terminal SNR" in text
        assert f"{other}.safetensors is" in text and "--force" in exc.value.hint
    assert not (tmp_path / "x.safetensors").exists()
    forced = tmp_path / "forced.safetensors"
    merge_checkpoints(v_files["eps"], v_files["v_ztsnr"], forced, spec, force=True)
    header = read_header(forced)
    assert "v_pred" not in header.tensors  # marked as A is
    assert header.metadata["modelspec.prediction_type"] == "epsilon"
    eps = tmp_path / "ee.safetensors"
    merge_checkpoints(v_files["eps"], v_files["eps"], eps, spec, hash_parents=False)
    assert len(read_header(eps).tensors) == 2513


# --- end to end: a tiny v + zero-terminal-SNR base through train, export, generate, convert


@pytest.mark.slow
def test_a_v_ztsnr_base_goes_through_train_export_generate_and_convert(
    tmp_path, tiny_sdxl, v_files, monkeypatch
):
    from typer.testing import CliRunner

    import tagtune.train.loop as loop
    from tagtune.card import render_card
    from tagtune.cli.main import app
    from tagtune.infotext import read_png_infotext
    from tagtune.train.synthetic import make_training_workspace, tiny_train_recipe
    from test_train_cli import _cache_latents

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
    from tagtune.errors import TrainingError
    from tagtune.train.stages import check_same_prediction

    epsilon_run = {"stages": [{"name": "main"}]}  # recorded before, or as epsilon
    check_same_prediction(epsilon_run, Prediction(), tmp_path)
    with pytest.raises(TrainingError, match="trained as epsilon, .* give v_prediction, zero"):
        check_same_prediction(epsilon_run, V_ZTSNR, tmp_path)
    v_run = {**epsilon_run, "prediction": V_ZTSNR.to_json()}
    check_same_prediction(v_run, V_ZTSNR, tmp_path)
    with pytest.raises(TrainingError, match="trained as v_prediction, zero terminal SNR"):
        check_same_prediction(v_run, Prediction("v_prediction"), tmp_path)
    check_same_prediction({"stages": []}, V_ZTSNR, tmp_path)  # nothing trained yet
