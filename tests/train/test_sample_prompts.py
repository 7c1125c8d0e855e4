"""Training samples from an sd-scripts prompt file: per-prompt settings, schedule, grid."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
from PIL import Image

from tagtune.core.errors import InputError
from tagtune.generate.infotext import read_png_infotext
from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
from tagtune.train.sample_prompts import (
    SamplePrompt,
    parse_prompt_line,
    read_prompt_file,
    sample_prompts,
    sampler_name,
)
from tagtune.train.stages import run_training

DEFAULTS = SamplePrompt("", "worst quality", 1024, 1024, 0, 7.0, 28, "euler")
FROZEN_TE = {"lr_text_encoder": 0.0, "lr_text_encoder_2": 0.0}


def test_a_line_with_every_option_sets_exactly_those_settings():
    line = "1girl, smile, (blue sky:1.2) --n lowres, bad hands --w 832 --h 1216 --d 7 --l 6.5 --s 20 --ss k_euler_a"
    p = parse_prompt_line(line, DEFAULTS, "prompts.txt", 1)
    assert p == SamplePrompt(
        "1girl, smile, (blue sky:1.2)", "lowres, bad hands", 832, 1216, 7, 6.5, 20, "euler_a"
    )
    assert parse_prompt_line("plain", DEFAULTS, "p.txt", 1) == replace(DEFAULTS, prompt="plain")


@pytest.mark.parametrize(
    ("given", "ours"),
    [("euler_a", "euler_a"), ("k_euler", "euler"), ("K_LMS", "lms"), ("DPM++ 2M Karras",
     "dpmpp_2m_karras"), ("dpmsolver++", "dpmpp_2m"), ("Euler a", "euler_a"), ("pndm", None)],
)  # fmt: skip
def test_sampler_names_of_tagtune_sd_scripts_and_a1111(given, ours):
    assert sampler_name(given) == ours


def test_the_file_skips_comments_and_blank_lines_and_seeds_by_position(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# samples\n\nred circle --d 99\n  # indented comment\nblue sky --w 512\n")
    prompts = read_prompt_file(path, DEFAULTS, first_seed=42)
    assert [(p.prompt, p.seed, p.width) for p in prompts] == [
        ("red circle", 99, 1024),
        ("blue sky", 43, 512),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a --x 3", "p.txt: line 3: --x: unknown option (allowed: --n (negative prompt), --w"),
        ("a --w 100", "p.txt: line 3: --w = '100': not a multiple of 8"),
        ("a --h 99999", "p.txt: line 3: --h = '99999': out of range (allowed: a multiple of 8"),
        ("a --s many", "p.txt: line 3: --s = 'many': not a whole number (allowed: 1 to 1000)"),
        ("a --l 0", "p.txt: line 3: --l = '0': out of range (allowed: a number above 0"),
        ("a --l nan", "p.txt: line 3: --l = 'nan': out of range"),
        ("a --d -1", "p.txt: line 3: --d = '-1': out of range (allowed: 0 to 4294967295)"),
        ("a --ss pndm", "p.txt: line 3: --ss = 'pndm': unknown sampler (allowed: euler_a, euler"),
        (" --w 64", "p.txt: line 3: the line has options but no prompt"),
    ],
)
def test_a_bad_option_is_one_line_naming_the_file_the_line_and_the_option(line, message):
    with pytest.raises(InputError) as err:
        parse_prompt_line(line, DEFAULTS, "p.txt", 3)
    assert str(err.value).startswith(message), str(err.value)


def test_a_bad_prompt_file_or_sampler_stops_training_before_any_work(tmp_path, tiny_sdxl):
    recipe = tiny_train_recipe(epochs=1, **FROZEN_TE)
    recipe.train.sample_every_n_epochs = 1
    recipe.train.sample_prompts_file = "prompts.txt"
    ws, lat = make_training_workspace(tmp_path / "ws", recipe, n=4)
    with pytest.raises(InputError, match="prompt file not found"):
        run_training(ws, components=tiny_sdxl, latents=lat, progress=False)
    (ws.root / "prompts.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(InputError, match="not UTF-8"):
        run_training(ws, components=tiny_sdxl, latents=lat, progress=False)
    assert not (ws.runs_dir / "run1").exists()
    cfg = recipe.train.model_copy(update={"sample_prompts_file": "", "sample_sampler": "pndm"})
    with pytest.raises(InputError, match="train.sample_sampler = 'pndm': unknown sampler"):
        sample_prompts(ws, cfg)


@pytest.mark.slow
def test_prompt_file_samples_at_start_every_step_and_epoch_carry_their_settings(
    tmp_path, tiny_sdxl
):
    recipe = tiny_train_recipe(epochs=1, batch_size=4, **FROZEN_TE)  # 4 images: 1 step
    recipe.train.sample_prompts = ["1girl, smile"]
    recipe.train.sample_prompts_file = "prompts.txt"
    recipe.train.sample_steps = 2
    recipe.train.sample_size = (64, 64)
    recipe.train.sample_sampler = "euler_a"
    recipe.train.sample_at_start = True
    recipe.train.sample_every_n_steps = 1
    recipe.train.sample_every_n_epochs = 1
    ws, lat = make_training_workspace(tmp_path / "ws", recipe, n=4)
    (ws.root / "prompts.txt").write_text(
        "# two prompts with their own settings\n"
        "red circle, outdoors --n blurry --w 32 --h 64 --d 5 --l 4.5 --s 3 --ss dpmpp_2m\n"
        "blue sky --ss k_euler\n"
    )
    run_training(ws, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)
    samples = ws.runs_dir / "run1" / "main" / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["epoch-001", "start", "step-000001"]
    for folder, step in (("start", "0"), ("step-000001", "1"), ("epoch-001", "1")):
        names = sorted(p.name for p in (samples / folder).iterdir())
        assert names == ["00.png", "01.png", "02.png", "grid.png"]
        infos = [read_png_infotext(samples / folder / f"{i:02d}.png") for i in range(3)]
        got = [(i.prompt, i.negative, i.width, i.height, i.seed, i.cfg, i.steps, i.sampler)
               for i in infos]  # fmt: skip
        assert got == [
            ("1girl, smile", "worst quality", 64, 64, 42, 7.0, 2, "euler_a"),
            ("red circle, outdoors", "blurry", 32, 64, 5, 4.5, 3, "dpmpp_2m"),
            ("blue sky", "worst quality", 64, 64, 44, 7.0, 2, "euler"),
        ]
        assert all(i.extra.get("Training step") == step for i in infos)
        assert Image.open(samples / folder / "01.png").size == (32, 64)
        grid = Image.open(samples / folder / "grid.png")
        assert grid.width == 2 * 64 and grid.height > 2 * 64  # 2x2 cells with label strips
