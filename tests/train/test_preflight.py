"""`tagtune train --dry-run` and `tagtune train` check everything before any work, report every
problem at once (file, stage, key), and count images and steps as `prepare --plan` does."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from cli_main import run_cli
from tagtune.core.catalog import open_catalog
from tagtune.recipe.model import BucketConfig, StageConfig
from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe

SIZES = [(128, 128), (96, 192), (192, 96), (150, 100), (128, 128), (100, 150), (128, 128)]


def _base(ws, tiny_sdxl) -> None:
    from tagtune.models.save import save_single_file

    save_single_file(tiny_sdxl, ws.root / "base.safetensors", dtype="fp32")


def _recipe(**main):
    recipe = tiny_train_recipe(**main)
    recipe.model.base = "base.safetensors"
    recipe.buckets = BucketConfig(resolution=128, min_side=64, max_side=256, step=64)
    return recipe


def _write_images(ws) -> None:
    """Real image files for every post (sizes cycle through SIZES), recorded in `files`."""
    from tagtune.synthetic.collection import shape_image

    rng = np.random.default_rng(0)
    (ws.root / "images").mkdir(exist_ok=True)
    with open_catalog(ws.catalog_path) as con:
        con.execute("DELETE FROM files")
        ids = [r[0] for r in con.execute("SELECT id FROM posts ORDER BY id").fetchall()]
        for pid in ids:
            w, h = SIZES[(pid - 1) % len(SIZES)]
            img, _ = shape_image(rng, (w, h))
            path = ws.root / "images" / f"{pid}.png"
            img.save(path)
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            con.execute(
                "INSERT INTO files (post_id, path, sha256, width, height) VALUES (?, ?, ?, ?, ?)",
                [pid, f"images/{pid}.png", sha, w, h],
            )


def test_dry_run_lists_every_problem_at_once(tmp_path, capsys, tiny_sdxl):
    recipe = _recipe(optimizer="adamw8bit")
    recipe.train.mixed_precision = "bf16"
    recipe.train.stages.append(StageConfig(name="favorites", subset="favorites", optimizer="adamw"))
    ws, _ = make_training_workspace(tmp_path / "ws", recipe, n=6, files=True)
    _base(ws, tiny_sdxl)

    res = run_cli(capsys, "train", ws.root, "--dry-run")

    assert res.code == 2, res.err
    toml = str(ws.recipe_path)
    assert res.error_lines[0] == (
        f"error: {toml}: train.mixed_precision: bf16 mixed precision needs a CUDA GPU "
        '(allowed: "no" on this machine)'
    )
    assert res.error_lines[1].startswith(
        f"error: {toml}: stage 'main': train.stages[0].optimizer: adamw8bit needs a CUDA GPU"
    )
    assert "no latent cache for the recipe's VAE" in res.error_lines[2]
    assert res.error_lines[3] == (
        f"error: {toml}: stage 'favorites': train.stages[1].subset: no training images in "
        "subset 'favorites'"
    )
    assert len(res.error_lines) == 4
    assert "dry run (128x128, one process)" in res.out  # the recipe's bucket resolution


def test_train_refuses_an_empty_later_stage_before_the_first_trains(tmp_path, capsys, tiny_sdxl):
    recipe = _recipe(epochs=1)
    recipe.train.stages.append(StageConfig(name="favorites", subset="favorites", optimizer="adamw"))
    ws, _ = make_training_workspace(tmp_path / "ws", recipe, n=4, files=True)
    _write_images(ws)
    _base(ws, tiny_sdxl)
    assert run_cli(capsys, "prepare", ws.root, "--workers", "0", "--json").code == 0

    res = run_cli(capsys, "train", ws.root)

    assert res.code == 2, res.err
    (line,) = res.error_lines
    assert line.startswith("error: 1 problem(s) before training: ")
    assert f"{ws.recipe_path}: stage 'favorites': train.stages[1].subset: no training" in line
    assert not (ws.runs_dir / "run1" / "main").exists()  # stage main never started


def _counts(data: dict, steps_key: str) -> list[tuple]:
    return [(s["name"], s["images"], s["steps_per_epoch"], s[steps_key]) for s in data["stages"]]


@pytest.mark.slow
def test_plan_and_dry_run_agree_before_and_after_prepare(tmp_path, capsys, tiny_sdxl):
    # held-out images, a favorites stage, flipped copies, repeats and several buckets
    recipe = _recipe(epochs=2, batch_size=2, repeats=2)
    recipe.buckets.flip = True
    recipe.validation.count = 2
    recipe.train.stages.append(
        StageConfig(name="favorites", subset="favorites", optimizer="adamw", batch_size=3)
    )
    ws, _ = make_training_workspace(tmp_path / "ws", recipe, n=9, favorites=[1, 2, 3, 5, 8])
    _write_images(ws)
    with open_catalog(ws.catalog_path) as con:  # a post without a file is never trained on
        con.execute("DELETE FROM files WHERE post_id = 9")
    _base(ws, tiny_sdxl)

    def both() -> tuple[list[tuple], list[tuple], dict]:
        plan = run_cli(capsys, "prepare", ws.root, "--plan", "--json")
        assert plan.code == 0, plan.err
        dry = run_cli(capsys, "train", ws.root, "--dry-run", "--json")
        dry_json = json.loads(dry.out)
        plan_json = json.loads(plan.out)
        return _counts(plan_json, "total_steps"), _counts(dry_json, "steps"), dry_json

    plan_before, dry_before, dry_json = both()
    assert plan_before == dry_before
    assert plan_before[0][1] == 6  # 8 posts with a file, 2 held out
    assert [p["key"] for p in dry_json["problems"]] == [""]  # only: no latent cache yet
    assert run_cli(capsys, "prepare", ws.root, "--workers", "0", "--json").code == 0
    plan_after, dry_after, dry_json = both()
    assert dry_json["stages"][0]["steps_from"] == "latent cache"
    (warning,) = dry_json["problems"]  # reported, but does not stop a run
    assert (warning["severity"], warning["stage"]) == ("warning", "main")
    assert warning["message"].startswith("1 captioned posts have no cached latent (posts 9)")
    assert plan_after == dry_after == plan_before
