"""`tagtune train` and `tagtune export` end to end: base file, latent cache, run.json, export header."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli_main import invoke
from tagtune.cli.main import app
from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe


def _cache_latents(ws, components, n):
    from tagtune.prepare.encode import PrepareItem, encode_images
    from tagtune.recipe.model import BucketConfig
    from tagtune.synthetic.collection import shape_image

    rng = np.random.default_rng(0)
    items = []
    for i in range(1, n + 1):
        img, _ = shape_image(rng, (64, 64))
        path = ws.root / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        items.append(PrepareItem(i, str(path), sha, 64, 64))
    cfg = BucketConfig(resolution=64, min_side=64, max_side=64, step=64)
    encode_images(items, components.vae, ws.cache_dir, cfg, workers=0)


@pytest.mark.slow
def test_train_then_export_from_the_command_line(tmp_path, tiny_sdxl):
    from tagtune.models.safetensors_io import read_header
    from tagtune.models.save import save_single_file

    recipe = tiny_train_recipe(epochs=1, batch_size=2, lr_text_encoder=0.0, lr_text_encoder_2=0.0)
    recipe.model.base = "base.safetensors"
    recipe.project.name = "shapes-xl"
    recipe.train.export_every_epoch = True
    ws, _ = make_training_workspace(tmp_path / "ws", recipe, n=4)
    save_single_file(tiny_sdxl, ws.root / "base.safetensors", dtype="fp32")
    _cache_latents(ws, tiny_sdxl, 4)
    runner = CliRunner()

    res = runner.invoke(app, ["train", str(ws.root), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert [(s["name"], s["images"], s["steps"]) for s in out["ran"]] == [("main", 4, 2)]
    epoch_file = ws.runs_dir / "run1/main/exports/shapes-xl-main-e001.safetensors"
    assert read_header(epoch_file).metadata["modelspec.title"] == "shapes-xl"
    run = json.loads((ws.runs_dir / "run1" / "run.json").read_text())
    assert run["base_model"]["path"] == "base.safetensors"
    assert len(run["base_model"]["sha256"]) == 64
    assert len(run["stages"][0]["inputs"]["latents_vae"]) == 64  # the VAE's fingerprint

    res = runner.invoke(app, ["export", str(ws.root), "--json"])
    assert res.exit_code == 0, res.output
    exported = json.loads(res.output)
    assert exported["path"] == str(ws.out_dir / "shapes-xl.safetensors")
    meta = read_header(ws.out_dir / "shapes-xl.safetensors").metadata
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert meta["modelspec.title"] == "shapes-xl"
    assert json.loads(meta["tagtune.recipe"])["project"]["name"] == "shapes-xl"
    training = json.loads(meta["tagtune.training"])
    assert (training["steps"], training["epochs"], training["images"]) == (2, 1, 4)
    assert training["stages"][0]["name"] == "main"
    freq = json.loads(meta["tagtune.tag_frequency"])
    assert sum(freq.values()) == 16 and all(v >= 1 for v in freq.values())
    run = json.loads((ws.runs_dir / "run1" / "run.json").read_text())
    assert run["export"]["path"] == "out/shapes-xl.safetensors"
    assert run["export"]["hashes"]["autov2"] == exported["hashes"]["autov2"]
    assert len(run["export"]["hashes"]["sha256"]) == 64
    assert meta["modelspec.date"] == run["stages"][0]["finished_at"]


@pytest.mark.slow
def test_exporting_the_same_stage_twice_gives_the_same_bytes(tmp_path, tiny_sdxl):
    """The export date comes from run.json (the stage's finished_at), not the wall clock:
    a re-export with --force and one to another folder have the same SHA-256."""
    from tagtune.models.safetensors_io import read_header
    from tagtune.models.save import save_single_file

    recipe = tiny_train_recipe(epochs=1, batch_size=2, lr_text_encoder=0.0, lr_text_encoder_2=0.0)
    recipe.model.base = "base.safetensors"
    ws, _ = make_training_workspace(tmp_path / "ws", recipe, n=2)
    save_single_file(tiny_sdxl, ws.root / "base.safetensors", dtype="fp32")
    _cache_latents(ws, tiny_sdxl, 2)
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(ws.root)]).exit_code == 0
    run_file = ws.runs_dir / "run1" / "run.json"
    run = json.loads(run_file.read_text())
    run["stages"][0]["finished_at"] = "2025-01-02T03:04:05+00:00"  # long before now
    run_file.write_text(json.dumps(run))

    def export(*args):
        res = runner.invoke(app, ["export", str(ws.root), "--json", *args])
        assert res.exit_code == 0, res.output
        path = json.loads(res.output)["path"]
        return path, hashlib.sha256(open(path, "rb").read()).hexdigest()

    first, digest = export()
    assert read_header(first).metadata["modelspec.date"] == "2025-01-02T03:04:05+00:00"
    assert export("--force") == (first, digest)
    other = tmp_path / "elsewhere" / "model.safetensors"
    other.parent.mkdir()
    assert export("--out", str(other)) == (str(other), digest)


def test_train_without_a_base_model_says_what_to_set(tmp_path):
    ws, _ = make_training_workspace(tmp_path / "ws", tiny_train_recipe(), n=2)
    res = invoke("train", ws.root)
    assert res.code == 2
    assert res.error_lines == [f"error: {ws.recipe_path}: model.base: no base model in the recipe"]


def test_export_before_training_is_a_clear_error(tmp_path):
    ws, _ = make_training_workspace(tmp_path / "ws", tiny_train_recipe(), n=2)
    res = invoke("export", ws.root)
    assert res.code == 2
    assert res.error_lines == [f"error: {ws.runs_dir / 'run1'}: no completed stage to export"]


def test_under_a_launcher_only_process_0_prints_the_summary(tmp_path, monkeypatch):
    import tagtune.train.stages as stages

    ws, _ = make_training_workspace(tmp_path / "ws", tiny_train_recipe(), n=2)
    summary = stages.TrainSummary(tmp_path / "run", notes=["stage 'main' is already complete"])
    monkeypatch.setattr(stages, "run_training", lambda *a, **k: summary)
    monkeypatch.setenv("RANK", "1")
    other = CliRunner().invoke(app, ["train", str(ws.root), "--json"])
    assert other.exit_code == 0 and other.output == ""
    monkeypatch.setenv("RANK", "0")
    main = CliRunner().invoke(app, ["train", str(ws.root), "--json"])
    assert json.loads(main.output)["notes"] == ["stage 'main' is already complete"]


@pytest.mark.slow
def test_train_reports_validation_in_json_run_json_and_the_summary(
    tmp_path, tiny_sdxl, monkeypatch
):
    from tagtune.models.save import save_single_file
    from tagtune.train import stages

    recipe = tiny_train_recipe(epochs=1, batch_size=2, lr_text_encoder=0.0, lr_text_encoder_2=0.0)
    recipe.model.base = "base.safetensors"
    recipe.validation.count = 2
    ws, _ = make_training_workspace(tmp_path / "ws", recipe, n=6)
    save_single_file(tiny_sdxl, ws.root / "base.safetensors", dtype="fp32")
    _cache_latents(ws, tiny_sdxl, 6)
    keys = {"step", "epoch", "loss", "loss_wrong_caption", "conditioning_gap", "seconds"}

    res = CliRunner().invoke(app, ["train", str(ws.root), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    validation = out["ran"][0]["validation"]
    assert (out["ran"][0]["images"], validation["images"]) == (4, 2)
    assert [e["step"] for e in validation["evaluations"]] == [0, 2]
    assert all(set(e) == keys for e in validation["evaluations"])
    assert out["notes"] == ["validation: 2 held-out images, never trained on"]
    run = json.loads((ws.runs_dir / "run1" / "run.json").read_text())
    assert run["stages"][0]["validation"] == validation

    # the end-of-stage summary a user reads (the same records, printed)
    summary = stages.TrainSummary(ws.runs_dir / "run1", ran=out["ran"])
    monkeypatch.setattr(stages, "run_training", lambda *a, **k: summary)
    text = CliRunner().invoke(app, ["train", str(ws.root)], env={"COLUMNS": "300"}).output
    first, last = validation["evaluations"]
    assert f"{first['loss']:.4f} -> {last['loss']:.4f}" in text
    gaps = [f"{e['conditioning_gap'] * 100:+.2f}%" for e in (first, last)]
    assert f"conditioning gap {gaps[0]} -> {gaps[1]}" in text
    assert "main: validation on 2 held-out images, step 0 -> 2" in text
    assert "2 evaluations took" in text and "of the stage)" in text
