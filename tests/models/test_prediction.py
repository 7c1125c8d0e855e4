"""v-prediction and zero-terminal-SNR models: what a base states, the recipe against it,
export markers, convert, diffusers' own single-file loader."""

from __future__ import annotations

import json
import logging

import pytest

from prediction_models import V_ZTSNR, write_prediction_files
from tagtune.core.errors import RecipeError
from tagtune.models.load import load_model
from tagtune.models.prediction import (
    Claim,
    Prediction,
    components_prediction,
    read_file_claim,
    read_folder_claim,
    resolve,
)
from tagtune.models.safetensors_io import read_header
from tagtune.models.save import save_diffusers
from tagtune.recipe.model import parse_recipe


@pytest.fixture(scope="module")
def v_files(tiny_sdxl, tmp_path_factory):
    """The tiny model as v + ztsnr, v and epsilon single files (fp16)."""
    return write_prediction_files(tiny_sdxl, tmp_path_factory.mktemp("pred"))


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
    from tagtune.recipe.workspace import init_workspace

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
