"""Diffusers folders written by `tagtune tiny-model --format diffusers` (and `convert`, through
the same writer) are what the libraries' `save_pretrained` write: the text encoders' configs
name their class, the scheduler and model_index carry diffusers' keys, and diffusers'
own pipeline loads the folder offline."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tagtune.cli.main import app


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusers") / "tiny"
    res = CliRunner().invoke(
        app, ["tiny-model", str(out), "--format", "diffusers", "--dtype", "fp32"]
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize(
    "sub, cls",
    [("text_encoder", "CLIPTextModel"), ("text_encoder_2", "CLIPTextModelWithProjection")],
)
def test_text_encoder_configs_load_with_autoconfig_and_name_their_class(folder, sub, cls):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder / sub, local_files_only=True)
    assert config.architectures == [cls]  # diffusers' SDXL training example reads it
    assert config.model_type == "clip_text_model"
    assert "transformers_version" in json.loads((folder / sub / "config.json").read_text())


def test_scheduler_and_index_carry_diffusers_keys_and_the_pipeline_loads(folder):
    from diffusers import DiffusionPipeline

    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (
        scheduler["_class_name"] == "EulerDiscreteScheduler" and "_diffusers_version" in scheduler
    )
    for sub in ("unet", "vae"):
        assert "_diffusers_version" in json.loads((folder / sub / "config.json").read_text())
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
