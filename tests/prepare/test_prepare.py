"""`tagtune prepare WS`: the plan from the catalog, the chart, the driver and the CLI."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from cli_main import invoke
from tagtune.cli.main import app
from tagtune.core.catalog import open_catalog
from tagtune.core.errors import WorkspaceError
from tagtune.core.workspace import Workspace
from tagtune.prepare.encode import open_latent_cache
from tagtune.prepare.run import bucket_chart, plan_workspace, prepare_workspace
from tagtune.recipe.model import BucketConfig, Recipe
from tagtune.recipe.workspace import init_workspace, workspace_recipe

runner = CliRunner()

# post id -> (width, height, favorite, excluded)
POSTS = {
    1: (128, 128, True, None),
    2: (96, 192, False, None),
    3: (192, 96, True, None),
    4: (150, 100, False, None),
    5: (100, 150, False, None),
    6: (128, 128, False, "safety: blocked tag loli"),  # excluded: never prepared
    7: (100, 100, False, None),  # corrupt file
}


def make_prepare_workspace(root: Path) -> Workspace:
    """A workspace with POSTS in its catalog (and their image files) and small buckets."""
    recipe = Recipe(buckets=BucketConfig(resolution=128, min_side=64, max_side=256, step=64))
    w = init_workspace(root, recipe)
    images = w.root / "images"
    images.mkdir()
    with open_catalog(w.catalog_path) as con:
        for pid, (width, height, fav, excluded) in POSTS.items():
            path = images / f"{pid}.png"
            if pid == 7:
                path.write_bytes(b"\x89PNG broken")
            else:
                im = Image.new("RGB", (width, height), (30 * pid, 90, 160))
                ImageDraw.Draw(im).ellipse((4, 4, width // 2, height // 2), fill=(250, 220, 0))
                im.save(path)
            con.execute(
                "INSERT INTO posts (id, favorite, excluded) VALUES (?, ?, ?)", [pid, fav, excluded]
            )
            con.execute(
                "INSERT INTO files (post_id, path, sha256, width, height) VALUES (?, ?, ?, ?, ?)",
                [
                    pid,
                    f"images/{pid}.png",
                    hashlib.sha256(path.read_bytes()).hexdigest(),
                    width,
                    height,
                ],
            )
        con.execute("INSERT INTO posts (id, favorite) VALUES (8, TRUE)")  # metadata only
        mark_captioned(con, recipe, [*POSTS, 8])
    return w


def mark_captioned(con, recipe: Recipe, post_ids) -> None:
    """Give posts a caption and mark the catalog judged with `recipe`, as `tagtune caption`
    leaves it (the plan counts captioned posts, as training does)."""
    from tagtune.ingest.verdicts import judged_with

    for pid in post_ids:
        con.execute(
            "INSERT INTO captions (post_id, caption, tags, groups, tokens) VALUES (?, ?, ?, ?, ?)",
            [pid, "circle", ["circle"], ["general"], 2],
        )
    con.execute("INSERT OR REPLACE INTO settings VALUES ('judged_with', ?)", [judged_with(recipe)])


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return make_prepare_workspace(tmp_path / "ws")


def test_plan_counts_buckets_and_steps_from_the_catalog(ws):
    plan = plan_workspace(ws)
    assert plan.images == 6
    assert plan.bucket_counts == {(64, 192): 1, (128, 128): 4, (192, 64): 1}
    main, fav = plan.stages
    # main: 6 images, batch 4, buckets 1/4/1 -> 3 steps per epoch, 26 epochs, 10% warm-up
    assert (main.images, main.steps_per_epoch, main.total_steps, main.warmup_steps) == (6, 3, 78, 8)
    # favorites: posts 1 and 3 (different buckets) -> 2 steps per epoch, 25 epochs
    assert (fav.images, fav.steps_per_epoch, fav.total_steps, fav.warmup_steps) == (2, 2, 50, 0)
    assert (plan.total_steps, plan.total_epochs) == (128, 51)


def test_cli_plan_json(ws):
    res = runner.invoke(app, ["prepare", str(ws.root), "--plan", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["buckets"] == {"64x192": 1, "128x128": 4, "192x64": 1}
    assert [(s["name"], s["images"], s["total_steps"]) for s in data["stages"]] == [
        ("main", 6, 78),
        ("favorites", 2, 50),
    ]
    assert data["total_steps"] == 128


def test_cli_plan_table(ws):
    res = runner.invoke(app, ["prepare", str(ws.root), "--plan"])
    assert res.exit_code == 0, res.output
    for text in ("128x128", "favorites", "total", "warm-up"):
        assert text in res.stdout


def test_cli_chart(ws, tmp_path):
    out = tmp_path / "buckets.png"
    res = runner.invoke(app, ["prepare", str(ws.root), "chart", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["chart"] == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.width >= 600
    assert not list(tmp_path.glob(".buckets.png.*"))  # no temporary left behind


def test_chart_of_nothing_is_an_error(tmp_path):
    with pytest.raises(WorkspaceError) as e:
        bucket_chart({}, tmp_path / "x.png")
    assert str(e.value) == "buckets: no images to chart"


def test_cli_unknown_action(ws):
    res = invoke("prepare", ws.root, "graph")
    assert res.code == 2
    assert res.error_lines == ["error: ACTION = 'graph': unknown action (allowed: chart)"]


def test_cli_prepare_needs_a_base_model(ws):
    res = invoke("prepare", ws.root)
    assert res.code == 2
    assert res.error_lines == [
        f"error: {ws.recipe_path}: model.base: no base model set; prepare encodes images with its"
        " VAE"
    ]


def test_prepare_workspace_encodes_included_images_and_records_problems(ws, tiny_sdxl):
    result = prepare_workspace(ws, workers=0, vae=tiny_sdxl.vae, rank=0, world_size=1)
    assert (result.planned, result.encoded) == (6, 5)
    assert [(p.post_id, p.reason) for p in result.problems] == [(7, "unreadable")]
    cache = open_latent_cache(ws.cache_dir, result.vae_hash)
    assert [r.post_id for r in cache.records()] == [1, 2, 3, 4, 5]
    assert cache.missing() == [7]

    def problems():
        with open_catalog(ws.catalog_path, read_only=True) as con:
            return con.execute(
                "SELECT post_id, reason, stage FROM problems ORDER BY post_id"
            ).fetchall()

    assert problems() == [(7, "unreadable", "prepare")]
    again = prepare_workspace(ws, workers=0, vae=tiny_sdxl.vae, rank=0, world_size=1)
    assert (again.encoded, again.cached) == (0, 5)
    assert problems() == [(7, "unreadable", "prepare")]  # replaced, not duplicated


def test_vae_comes_from_the_recipe_and_the_cli_encodes(ws, tiny_sdxl):
    from tagtune.models.save import save_single_file
    from tagtune.prepare.encode import vae_fingerprint
    from tagtune.prepare.run import load_recipe_vae

    save_single_file(tiny_sdxl, ws.root / "base.safetensors", dtype="fp32", hash_sha256=False)
    fixed = copy.deepcopy(tiny_sdxl.vae)
    with torch.no_grad():
        next(fixed.parameters()).mul_(0.5)
    fixed.save_pretrained(ws.root / "fixed-vae")
    recipe = workspace_recipe(ws)
    recipe.model.base = "base.safetensors"
    init_workspace(ws.root, recipe, force=True)
    assert vae_fingerprint(load_recipe_vae(ws)) == vae_fingerprint(tiny_sdxl.vae)

    res = runner.invoke(app, ["prepare", str(ws.root), "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["encoded"], data["problems"], data["vae_hash"]) == (
        5,
        1,
        vae_fingerprint(tiny_sdxl.vae),
    )

    recipe.model.vae = "fixed-vae"  # a fixed VAE to bake in: its latents, not the base's
    init_workspace(ws.root, recipe, force=True)
    assert vae_fingerprint(load_recipe_vae(ws)) == vae_fingerprint(fixed)
