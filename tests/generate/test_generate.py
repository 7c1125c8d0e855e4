"""Generate: long prompts on the tiny model, PNGs whose infotext parses back, --from-png."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tagtune.cli.main import app
from tagtune.core.errors import InputError
from tagtune.generate.infotext import read_png_infotext
from tagtune.generate.pipeline import (
    LoadedModel,
    generate,
    params_from_png,
    parse_size,
    prompt_embeddings,
)
from tagtune.generate.samplers import SAMPLER_LABELS, SCHEDULERS, make_scheduler
from tagtune.models.tiny import SCHEDULER_CONFIG

LONG = ", ".join(["1girl", "long hair", "(smile:1.2)", "blue sky", r"hat_\(object\)"] * 12)


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_long_prompt_is_chunked_and_negative_padded(tiny_sdxl):
    cond, pooled, uncond, uncond_pooled = prompt_embeddings(tiny_sdxl, LONG, "worst quality")
    assert cond.shape[1] > 77 and cond.shape[1] % 77 == 0
    assert uncond.shape == cond.shape
    assert pooled.shape == uncond_pooled.shape == (1, 40)


def test_generate_writes_pngs_whose_infotext_parses_back(tiny_sdxl, tmp_path):
    paths = generate(
        tiny_sdxl,
        LONG,
        "worst quality",
        steps=2,
        size="64x64",
        n=2,
        seed=7,
        clip_skip=2,
        out_dir=tmp_path,
    )
    assert [p.name for p in paths] == ["00000-7.png", "00001-8.png"]
    info = read_png_infotext(paths[1])
    assert (info.prompt, info.negative, info.steps, info.sampler, info.seed) == (
        LONG,
        "worst quality",
        2,
        "euler_a",
        8,
    )
    assert (info.width, info.height, info.cfg, info.clip_skip, info.model) == (
        64,
        64,
        7.0,
        2,
        "tiny-sdxl(seed=0)",
    )
    assert Image.open(paths[0]).size == (64, 64)
    # a second run continues the numbering instead of overwriting
    more = generate(tiny_sdxl, "smile", steps=1, size=(64, 64), seed=1, out_dir=tmp_path)
    assert more[0].name == "00002-1.png"


def test_from_png_reproduces_the_image(tiny_sdxl, tmp_path):
    loaded = LoadedModel(tiny_sdxl, "tiny", "0123456789")
    first = generate(
        loaded,
        "1girl, (blue sky:1.3)",
        "worst quality",
        steps=2,
        size="64x64",
        n=2,
        seed=3,
        sampler="dpmpp_2m",
        out_dir=tmp_path / "a",
    )
    params = params_from_png(first[1])
    assert params == {
        "prompt": "1girl, (blue sky:1.3)",
        "negative": "worst quality",
        "steps": 2,
        "cfg": 7.0,
        "sampler": "dpmpp_2m",
        "seed": 4,
        "size": (64, 64),
        "clip_skip": 1,
    }
    again = generate(loaded, out_dir=tmp_path / "b", **params)
    assert np.array_equal(pixels(again[0]), pixels(first[1]))
    assert read_png_infotext(again[0]).model_hash == "0123456789"


def test_every_sampler_has_a_scheduler_and_a_label():
    assert set(SCHEDULERS) == set(SAMPLER_LABELS)
    for name in SCHEDULERS:
        assert make_scheduler(name, SCHEDULER_CONFIG).__class__.__name__ == SCHEDULERS[name][0]
    assert make_scheduler("dpmpp_2m_karras", SCHEDULER_CONFIG).config.use_karras_sigmas


SIZE_RULE = "width and height must be multiples of 8 from 8 to 4096"


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("64x60", f"--size = '64x60': {SIZE_RULE} (allowed: e.g. 832x1216, 1024x1024)"),
        ("big", "--size = 'big': size must be WIDTHxHEIGHT (allowed: e.g. 832x1216)"),
        ("0x64", f"--size = '0x64': {SIZE_RULE} (allowed: e.g. 832x1216, 1024x1024)"),
        (
            "100000x100000",  # used to grow until the kernel killed it
            f"--size = '100000x100000': {SIZE_RULE} (allowed: e.g. 832x1216, 1024x1024)",
        ),
        ("4104x8", f"--size = '4104x8': {SIZE_RULE} (allowed: e.g. 832x1216, 1024x1024)"),
    ],
)
def test_bad_sizes(size, message):
    with pytest.raises(InputError) as exc:
        parse_size(size)
    assert str(exc.value) == message


def test_unknown_sampler_lists_the_allowed_ones(tiny_sdxl, tmp_path):
    with pytest.raises(InputError) as exc:
        generate(tiny_sdxl, "smile", sampler="plms", size="64x64", out_dir=tmp_path)
    assert (
        str(exc.value) == f"--sampler = 'plms': unknown sampler (allowed: {', '.join(SCHEDULERS)})"
    )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("cfg", -3.0, "--cfg = -3.0: must be at least 1"),
        ("cfg", float("inf"), "--cfg = inf: must be at least 1"),
        ("steps", 0, "--steps = 0: must be at least 1"),
    ],
)
def test_out_of_range_settings_are_refused_before_loading(tmp_path, option, value, message):
    with pytest.raises(InputError) as exc:
        generate(tmp_path / "absent.safetensors", "smile", size="64x64", **{option: value})
    assert str(exc.value) == message


def test_cli_generate_and_from_png(tiny_sdxl, tmp_path, monkeypatch):
    import tagtune.generate.pipeline as gen

    monkeypatch.setattr(
        gen,
        "load_for_generation",
        lambda model, tokenizers=None, device=None: LoadedModel(tiny_sdxl, "tiny", "abcdef0123"),
    )
    ckpt = tmp_path / "tiny.safetensors"
    ckpt.write_bytes(b"")
    runner = CliRunner()
    args = [
        "generate",
        str(ckpt),
        "smile, blue sky",
        "--steps",
        "2",
        "--size",
        "64x64",
        "--seed",
        "11",
        "-n",
        "2",
        "--out",
        str(tmp_path / "o"),
        "--json",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["seeds"] == [11, 12]
    assert data["params"]["negative"] == "worst quality"  # the CLI's default negative prompt
    first = data["images"][1]
    assert read_png_infotext(first).model_hash == "abcdef0123"
    res = runner.invoke(
        app, ["generate", str(ckpt), "--from-png", first, "--out", str(tmp_path / "p"), "--json"]
    )
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["params"]["prompt"] == "smile, blue sky" and again["seeds"] == [12]
    assert np.array_equal(pixels(again["images"][0]), pixels(first))


def test_cli_needs_a_prompt(tmp_path):
    res = CliRunner().invoke(app, ["generate", str(tmp_path / "x.safetensors")])
    assert isinstance(res.exception, InputError)
    assert str(res.exception) == "PROMPT: a PROMPT is needed (or --from-png FILE)"


def test_training_samples_are_the_images_tagtune_generate_makes(tiny_sdxl, tmp_path):
    """Same prompt (emphasis, over 75 tokens), negative, seed and settings: same pixels."""
    from tagtune.recipe.model import Recipe
    from tagtune.train.sampling import CFG_SCALE, SAMPLER, sample_images

    cfg = Recipe().train.model_copy(
        update={"sample_prompts": [LONG], "sample_steps": 2, "sample_size": (64, 64), "seed": 9}
    )
    sample = sample_images(tiny_sdxl, cfg, tmp_path / "samples", "tiny")[0]
    (made,) = generate(
        tiny_sdxl, LONG, cfg.sample_negative, steps=2, cfg=CFG_SCALE, sampler=SAMPLER, seed=9,
        size=(64, 64), out_dir=tmp_path / "gen", device="cpu",
    )  # fmt: skip
    assert np.array_equal(pixels(sample), pixels(made))
    assert read_png_infotext(sample).prompt == read_png_infotext(made).prompt == LONG


def test_training_samples_work_with_a_bf16_unet_beside_fp32_modules(tiny_sdxl, tmp_path):
    """DeepSpeed bf16 leaves the trained U-Net in bf16 and the VAE and encoders in fp32."""
    import copy

    import torch

    from tagtune.recipe.model import Recipe
    from tagtune.train.sampling import sample_images

    mixed = copy.deepcopy(tiny_sdxl)
    mixed.unet.to(torch.bfloat16)
    cfg = Recipe().train.model_copy(
        update={"sample_prompts": ["1girl, smile"], "sample_steps": 2, "sample_size": (64, 64)}
    )
    paths = sample_images(mixed, cfg, tmp_path / "samples", "tiny")
    assert [p.name for p in paths] == ["00.png", "grid.png"]
    assert pixels(paths[0]).std() > 0
