"""`tagtune clean` and the pruning of completed stages: what goes, and what never does."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from tagtune.cli.main import app
from tagtune.core.stale_temps import temp_suffix
from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
from tagtune.train import records as rec
from tagtune.train.clean import clean_workspace, prune_completed_stage

VAE_NOW, VAE_OLD = "a" * 64, "b" * 64


def _state(folder, step: int, size: int = 1000, complete: bool = True):
    path = folder / f"step-{step}"
    path.mkdir(parents=True)
    (path / "unet.safetensors").write_bytes(b"x" * size)
    (path / "state.json").write_text(json.dumps({"step": step}))
    if complete:
        (path / "COMPLETE").write_text("")
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _workspace(tmp_path):
    """Stage main complete (final step-4), stage favorites interrupted (newest step-6), a
    latent cache of the recipe's VAE and of an older one, a killed write's temporary."""
    ws, _ = make_training_workspace(tmp_path / "ws", tiny_train_recipe(), n=2)
    run = ws.runs_dir / "run1"
    for step in (2, 3, 4):
        _state(run / "main/states", step)
    for step in (5, 6):
        _state(run / "favorites/states", step)
    record = {
        "stages": [
            {"name": "main", "status": "complete", "final_state": "runs/run1/main/states/step-4"},
            {"name": "favorites", "status": "interrupted", "final_state": None},
        ]
    }
    (run / rec.RUN_FILE).write_text(json.dumps(record))
    for vae in (VAE_NOW, VAE_OLD):
        cache = ws.cache_dir / "latents" / f"vae-{vae[:16]}"
        cache.mkdir(parents=True)
        (cache / "manifest.json").write_text("{}")
        (cache / "shard-r0-00000.safetensors").write_bytes(b"y" * 5000)
    host = temp_suffix().rsplit("-", 1)[1]
    temp = run / "main/states" / f".step-5.abcdefgh.{_dead_pid()}-{host}"
    temp.mkdir()
    (temp / "unet.safetensors").write_bytes(b"z" * 300)
    return ws, run


def test_dry_run_reports_stale_states_old_caches_and_temporaries_with_bytes(tmp_path):
    ws, run = _workspace(tmp_path)
    report = clean_workspace(ws, states=True, cache=True, dry_run=True, vae_hash=VAE_NOW)
    found = {(r.kind, r.path) for r in report.removals}
    assert found == {
        ("state", run / "main/states/step-2"),
        ("state", run / "main/states/step-3"),
        ("state", run / "favorites/states/step-5"),
        ("cache", ws.cache_dir / f"latents/vae-{VAE_OLD[:16]}"),
        ("temporary", next((run / "main/states").glob(".step-5.*"))),
    }
    assert report.bytes == sum(r.bytes for r in report.removals) > 2 * 1000 + 5000 + 300
    assert all(r.path.exists() for r in report.removals)  # a dry run removes nothing


def test_never_the_final_state_export_needs_nor_the_state_a_resume_needs(tmp_path):
    ws, run = _workspace(tmp_path)
    clean_workspace(ws, states=True, cache=True, vae_hash=VAE_NOW)
    assert sorted(p.name for p in (run / "main/states").iterdir()) == ["step-4"]
    assert sorted(p.name for p in (run / "favorites/states").iterdir()) == ["step-6"]
    assert (ws.cache_dir / f"latents/vae-{VAE_NOW[:16]}/shard-r0-00000.safetensors").is_file()
    assert not (ws.cache_dir / f"latents/vae-{VAE_OLD[:16]}").exists()


def test_never_a_file_tagtune_did_not_write(tmp_path):
    ws, run = _workspace(tmp_path)
    (run / "main/states/step-2/notes.txt").write_text("mine")
    (run / "main/states/my-backup").mkdir()
    (ws.cache_dir / f"latents/vae-{VAE_OLD[:16]}/readme.md").write_text("mine")
    (ws.runs_dir / "other").mkdir()
    _state(ws.runs_dir / "other/main/states", 1)  # a run without run.json: not tagtune's
    report = clean_workspace(ws, states=True, cache=True, vae_hash=VAE_NOW)
    assert (run / "main/states/step-2/notes.txt").is_file()
    assert (run / "main/states/my-backup").is_dir()
    assert (ws.cache_dir / f"latents/vae-{VAE_OLD[:16]}/readme.md").is_file()
    assert (ws.runs_dir / "other/main/states/step-1/COMPLETE").is_file()
    assert not (run / "main/states/step-3").exists()
    assert any("step-2: holds files tagtune did not write" in k for k in report.kept)


def test_a_completed_stage_without_its_final_state_keeps_everything(tmp_path):
    ws, run = _workspace(tmp_path)
    (run / "main/states/step-4/COMPLETE").unlink()
    clean_workspace(ws, states=True, dry_run=False)
    assert sorted(p.name for p in (run / "main/states").iterdir()) == ["step-2", "step-3", "step-4"]


def test_a_completed_stage_keeps_its_final_state_only_unless_the_recipe_says_all(
    tmp_path, tiny_sdxl
):
    import copy

    from tagtune.train.stages import run_training

    kept = {}
    for keep in ("final", "all"):
        recipe = tiny_train_recipe(epochs=2, lr_text_encoder=0.0, lr_text_encoder_2=0.0)
        recipe.train.keep_states_of_completed_stages = keep
        ws, lat = make_training_workspace(tmp_path / keep, recipe, n=4)  # 2 steps per epoch
        run_training(ws, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)
        kept[keep] = sorted(p.name for p in (ws.runs_dir / "run1/main/states").iterdir())
    assert kept == {"final": ["step-4"], "all": ["step-2", "step-4"]}


def test_pruning_a_completed_stage_keeps_only_its_final_state(tmp_path):
    states = tmp_path / "states"
    for step in (2, 3, 4):
        _state(states, step)
    (states / "step-1").mkdir()  # not a complete state: not touched here
    assert [p.name for p in prune_completed_stage(states, states / "step-4")] == [
        "step-2",
        "step-3",
    ]
    assert sorted(p.name for p in states.iterdir()) == ["step-1", "step-4"]
    # a final state that is not complete: nothing goes
    _state(states, 6)
    _state(states, 7, complete=False)
    assert prune_completed_stage(states, states / "step-7") == []


def test_clean_command_prints_what_it_would_remove_and_the_bytes(tmp_path):
    ws, run = _workspace(tmp_path)
    res = CliRunner().invoke(app, ["clean", str(ws.root), "--dry-run"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert f"would remove state {run / 'main/states/step-2'} (" in res.output
    assert "would remove 4 entries," in res.output  # states and the temporary, no cache
    assert (run / "main/states/step-2").is_dir()
    res = CliRunner().invoke(app, ["clean", str(ws.root), "--states", "--json"])
    out = json.loads(res.output)
    assert out["dry_run"] is False and len(out["removals"]) == 4 and out["bytes"] > 3000
    assert not (run / "main/states/step-2").exists()


def test_clean_cache_keeps_the_latents_of_the_recipes_vae(tmp_path, tiny_sdxl):
    from tagtune.models.save import save_single_file
    from tagtune.synthetic.runs import make_theme_workspace

    recipe = tiny_train_recipe()
    recipe.model.base = "base.safetensors"
    ws, _ = make_theme_workspace(tmp_path / "ws", recipe, tiny_sdxl.vae, n=2)
    save_single_file(tiny_sdxl, ws.root / "base.safetensors", dtype="fp32")
    (current,) = (ws.cache_dir / "latents").iterdir()
    old = ws.cache_dir / "latents" / f"vae-{VAE_OLD[:16]}"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    res = CliRunner().invoke(app, ["clean", str(ws.root), "--cache", "--json"])
    assert res.exit_code == 0, res.output
    assert [r["path"] for r in json.loads(res.output)["removals"]] == [str(old)]
    assert current.is_dir() and not old.exists()
