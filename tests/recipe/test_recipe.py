"""The recipe: defaults are the reference workflow, errors name key, value and what is allowed."""

from __future__ import annotations

import datetime as dt
import tomllib

import pytest

from tagtune.core.errors import RecipeError
from tagtune.core.workspace import open_workspace
from tagtune.recipe.model import Recipe, load_recipe, parse_recipe
from tagtune.recipe.toml_io import render_recipe
from tagtune.recipe.workspace import init_workspace, workspace_recipe


def test_defaults_are_the_reference_workflow():
    r = Recipe()
    main, fav = r.train.stages
    assert (main.name, main.subset, main.epochs, main.repeats, main.batch_size) == (
        "main",
        "all",
        26,
        1,
        4,
    )
    assert (main.optimizer, main.lr_unet, main.lr_text_encoder, main.lr_text_encoder_2) == (
        "adamw8bit",
        1e-5,
        2e-6,
        2e-6,
    )
    assert (main.scheduler, main.warmup_ratio, main.noise_offset) == (
        "cosine_with_restarts",
        0.1,
        0.0,
    )
    assert (fav.name, fav.subset, fav.epochs, fav.batch_size, fav.optimizer) == (
        "favorites",
        "favorites",
        25,
        4,
        "adamw8bit",
    )
    assert (fav.lr_unet, fav.lr_text_encoder, fav.lr_text_encoder_2) == (1e-6, 0.0, 0.0)
    assert fav.cache_text_encoder_outputs is False
    assert (fav.scheduler, fav.warmup_ratio, fav.warmup_steps, fav.noise_offset) == (
        "constant",
        0,
        0,
        0.0357,
    )
    c = r.caption
    assert c.order == ["artist", "copyright", "character", "general", "quality", "rating", "period"]
    assert [(b.min, b.tag) for b in c.quality_bands] == [
        (150, "masterpiece"),
        (100, "best quality"),
        (75, "great quality"),
        (25, "medium quality"),
        (0, "normal quality"),
        (-5, "low quality"),
        (None, "worst quality"),
    ]
    assert c.ratings == {
        "g": ["safe"],
        "s": ["sensitive"],
        "q": ["nsfw"],
        "e": ["nsfw", "explicit"],
    }
    assert [(p.start, p.tag) for p in c.periods] == [
        (dt.date(2021, 1, 1), "newest"),
        (dt.date(2018, 1, 1), "recent"),
        (dt.date(2015, 1, 1), "mid"),
        (dt.date(2011, 1, 1), "early"),
        (None, "oldest"),
    ]
    assert r.export.clip_skip == 1 and r.export.negative_prompt == "worst quality"
    assert r.project.license == "Fair AI Public License 1.0-SD"


def test_rendered_recipe_parses_back_to_the_defaults():
    assert parse_recipe(tomllib.loads(render_recipe())) == Recipe()


def test_init_writes_a_loadable_recipe_and_refuses_to_overwrite(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    assert workspace_recipe(open_workspace(ws.root)) == Recipe()
    with pytest.raises(RecipeError.__mro__[1]) as exc:  # WorkspaceError
        init_workspace(tmp_path / "ws")
    assert "already exists" in str(exc.value)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[train]\nbogus = 1\n", "train.bogus: unknown key (allowed: run, seed, mixed_precision"),
        (
            '[[train.stages]]\nname = "x"\noptimizer = "adam"\n',
            "train.stages[0].optimizer = 'adam': not an allowed value (allowed: adamw8bit, adamw, adafactor)",
        ),
        (
            '[train]\nmixed_precision = "fp8"\n',
            "train.mixed_precision = 'fp8': not an allowed value (allowed: bf16, fp16, no)",
        ),
        ("[[train.stages]]\nepochs = 2\n", "train.stages[0].name: required key is missing"),
        (
            '[[train.stages]]\nname = "a"\nepochs = 0\n',
            "train.stages[0].epochs = 0: input should be greater than or equal to 1",
        ),
        (
            '[[train.stages]]\nname = "a"\nwarmup_ratio = 0.1\nwarmup_steps = 5\n',
            "set warmup_ratio (0.1) or warmup_steps (5), not both",
        ),
        (
            '[[train.stages]]\nname = "a"\ncache_text_encoder_outputs = true\n',
            "cache_text_encoder_outputs needs frozen encoders and fixed captions, but lr_text_encoder = 2e-06",
        ),
        ('[caption]\norder = ["artist", "artist"]\n', "caption.order: a group appears twice"),
        ('[caption]\norder = ["artists"]\n', "caption.order[0] = 'artists': not an allowed value"),
        (
            '[caption]\nratings = { g = ["safe"], x = ["nsfw"] }\n',
            "caption.ratings: unknown rating letter(s) ['x'] (allowed: g, s, q, e)",
        ),
        (
            "schema_version = 99\n",
            "schema_version = 99: unsupported recipe version (allowed: 0..1)",
        ),
        ("[buckets]\nmin_side = 4096\n", "buckets.min_side (4096) exceeds buckets.max_side (2048)"),
        ('[buckets]\nflip = "yes"\n', "buckets.flip = 'yes': input should be a valid boolean"),
        ('[train]\nseed = "26"\n', "train.seed = '26': input should be a valid integer"),
        ("[train]\nseed = 2.5\n", "train.seed = 2.5: input should be a valid integer"),
        (
            '[[train.stages]]\nname = "a"\nlr_unet = inf\n',
            "train.stages[0].lr_unet = inf: input should be a finite number",
        ),
        (
            '[[caption.quality_bands]]\nmin = nan\ntag = "a"\n',
            "caption.quality_bands[0].min = nan: input should be a finite number",
        ),
        ("[train]\nsample_size = [100000, 16]\n", "train.sample_size: 100000x16 is not two"),
        ("[train]\nsample_size = [1024, 1020]\n", "multiples of 8 from 8 to 4096"),
        ("[buckets]\nmax_side = 8192\n", "buckets.max_side = 8192: input should be less than"),
    ],
)
def test_recipe_errors_name_key_value_and_allowed(tmp_path, toml, expected):
    path = tmp_path / "tagtune.toml"
    path.write_text(toml)
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    assert expected in str(exc.value)
    assert str(path) in str(exc.value)


def test_old_recipe_without_version_is_migrated(tmp_path):
    path = tmp_path / "tagtune.toml"
    path.write_text('[project]\nname = "old"\n')
    r = load_recipe(path)
    assert r.schema_version == 1 and r.project.name == "old"


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "tagtune.toml"
    path.write_text("[train\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(path)


def test_workspace_resolves_recipe_and_catalog_paths(tmp_path, monkeypatch):
    ws = init_workspace(tmp_path / "ws")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ws.resolve("base/model.safetensors") == ws.root / "base/model.safetensors"
    assert ws.resolve("~/m.safetensors") == tmp_path / "home/m.safetensors"
    assert ws.resolve(tmp_path / "abs.png") == tmp_path / "abs.png"


def test_integers_for_floats_lists_for_pairs_and_quoted_dates_are_fine(tmp_path):
    path = tmp_path / "tagtune.toml"
    path.write_text(
        '[train]\nsample_size = [512, 768]\n[[train.stages]]\nname = "a"\nlr_unet = 1\n'
        '[[caption.periods]]\nstart = "2020-01-01"\ntag = "new"\n'
        '[[caption.periods]]\ntag = "old"\n'
    )
    recipe = load_recipe(path)
    assert recipe.train.stages[0].lr_unet == 1.0
    assert recipe.train.sample_size == (512, 768)
    assert recipe.caption.periods[0].start == dt.date(2020, 1, 1)


def test_a_recipe_that_is_not_utf8_names_the_byte_and_line(tmp_path):
    path = tmp_path / "tagtune.toml"
    path.write_bytes(b'[project]\nname = "caf\xe9"\n')
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    assert str(exc.value) == f"{path}: not UTF-8 text (byte 0xe9 on line 2)"
