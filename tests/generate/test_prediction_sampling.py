"""Sampling a v-prediction / zero-terminal-SNR model: the scheduler, CFG rescale, infotext."""

from __future__ import annotations

import pytest
import torch

from prediction_models import V_ZTSNR, as_model
from tagtune.core.errors import InputError
from tagtune.generate.infotext import Infotext, format_infotext, parse_infotext
from tagtune.models.prediction import (
    Prediction,
)

# --- sampling --------------------------------------------------------------------------


def _image(comps, sampler="euler", **kw):
    from tagtune.generate.pipeline import build_pipeline, prompt_embeddings, render

    pipe = build_pipeline(comps, sampler, device="cpu")
    emb = prompt_embeddings(comps, "1girl, blue sky", "worst quality")
    return torch.tensor(list(render(pipe, emb, 5, 3, 7.0, 64, 64, **kw).getdata())).float()


def test_the_scheduler_follows_the_model(tiny_sdxl):
    from tagtune.generate.pipeline import build_pipeline
    from tagtune.generate.samplers import make_scheduler

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

    from tagtune.generate.infotext import read_png_infotext
    from tagtune.generate.pipeline import LoadedModel, generate

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
    from tagtune.generate.pipeline import LoadedModel, generate, params_from_png

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
