"""A kohya-style folder from ingest to a trained tiny model, through the command line (issue 18):
two concepts with repeats, `.txt` and `.caption` files; the repeats are in the plan, the dry
run and the steps training takes."""

from __future__ import annotations

import json

import pytest
from test_kohya_datasets import make_kohya_folder
from typer.testing import CliRunner

from tagtune.cli.main import app
from tagtune.recipe.model import BucketConfig
from tagtune.recipe.workspace import init_workspace
from tagtune.synthetic.runs import tiny_train_recipe

runner = CliRunner()


def _ok(*args: str) -> dict:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_kohya_folder_ingests_captions_prepares_and_trains(tmp_path, tiny_sdxl):
    import torch

    from tagtune.models.load import read_checkpoint
    from tagtune.models.save import save_single_file

    data = make_kohya_folder(tmp_path)
    recipe = tiny_train_recipe(epochs=1, batch_size=5, lr_text_encoder=0.0, lr_text_encoder_2=0.0)
    recipe.model.base = "base.safetensors"
    recipe.buckets = BucketConfig(resolution=64, min_side=64, max_side=64, step=64)
    ws = init_workspace(tmp_path / "ws", recipe)
    save_single_file(tiny_sdxl, ws.root / "base.safetensors", dtype="fp32")
    root = str(ws.root)

    ingested = _ok("ingest", root, str(data))
    assert (ingested["posts"], ingested["images"]) == (4, 4)
    assert _ok("caption", root)["captions"] == 4
    plan = _ok("prepare", root, "--plan")["stages"][0]
    # 2 images x 3 repeats + 2 images x 2 repeats = 10 shown per epoch, batch 5: 2 steps
    assert (plan["images"], plan["images_per_epoch"], plan["total_steps"]) == (4, 10, 2)
    _ok("prepare", root, "--workers", "0")
    dry = _ok("train", root, "--dry-run")["stages"][0]
    assert (dry["images"], dry["images_per_epoch"], dry["steps"]) == (4, 10, 2)
    out = _ok("train", root)
    assert [(s["name"], s["images"], s["steps"]) for s in out["ran"]] == [("main", 4, 2)]
    _ok("export", root)
    trained, _ = read_checkpoint(ws.out_dir / f"{recipe.project.name}.safetensors")
    base, _ = read_checkpoint(ws.root / "base.safetensors")
    unet = [k for k in base if k.startswith("model.diffusion_model.")]
    assert unet and any(not torch.equal(trained[k].float(), base[k].float()) for k in unet)
