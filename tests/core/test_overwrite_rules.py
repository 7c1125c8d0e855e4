"""One rule for every output, through the real commands: an existing file is replaced only with
--force, an input (base model, parent, checkpoint, source) never, not even through a symlink or
a hard link; and a completed stage whose final state is gone is an error, never the base."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from cli_main import run_cli
from tagtune.models.safetensors_io import read_header
from tagtune.models.save import save_single_file
from tagtune.recipe.workspace import init_workspace, workspace_recipe
from tagtune.train import records as rec
from tagtune.train.state import MARKER

PRECIOUS = b"the user's own file, not a checkpoint"
U = "model.diffusion_model.out.2.weight"
VAE_KEY = "first_stage_model.encoder.conv_in.weight"


def _parent(path, seed):
    g = torch.Generator().manual_seed(seed)
    save_file({U: torch.randn(3, 4, generator=g).half(), VAE_KEY: torch.randn(2, 2).half()}, path)
    return path


def completed_run_workspace(root, tiny_sdxl):
    """A workspace whose stage `main` is complete (its final state holds no trained module,
    so an export writes the base weights) and whose base model is `base.safetensors`."""
    ws = init_workspace(root)
    recipe = workspace_recipe(ws)
    recipe.model.base = "base.safetensors"
    recipe.train.mixed_precision = "no"  # CPU: the stage chain is reached
    init_workspace(ws.root, recipe=recipe, force=True)
    save_single_file(tiny_sdxl, ws.root / "base.safetensors")
    state = ws.runs_dir / "run1" / "main" / "states" / "step-2"
    state.mkdir(parents=True)
    (state / MARKER).write_text("ok\n")
    (state / "state.json").write_text(json.dumps({"settings": {"name": "main", "method": "full"}}))
    record = rec.new_run("run1", recipe, {"path": "base.safetensors", "sha256": "", "autov2": ""})
    entry = rec.stage_record(
        recipe.stage("main"), images=2, steps_per_epoch=1, warmup_steps=0,
        captions_sha256="", latents_vae="",
    )  # fmt: skip
    entry.update(status="complete", final_state=state.relative_to(ws.root).as_posix())
    rec.put_stage(record, entry, ["main", "favorites"])
    rec.write_run(ws.runs_dir / "run1", record)
    return ws


@pytest.fixture()
def trained_ws(tmp_path, tiny_sdxl):
    return completed_run_workspace(tmp_path / "ws", tiny_sdxl)


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "relative path"])
def test_export_never_replaces_the_base_model_even_with_force(trained_ws, capsys, how):
    base = trained_ws.root / "base.safetensors"
    before = base.read_bytes()
    out = {"same path": base, "relative path": trained_ws.root / "out" / ".." / base.name}.get(how)
    if how == "symlink":
        out = trained_ws.root / "out" / "link.safetensors"
        out.symlink_to(base)
    elif how == "hard link":
        out = trained_ws.root / "out" / "hard.safetensors"
        os.link(base, out)
    res = run_cli(capsys, "export", trained_ws.root, "--out", out, "--force")
    assert res.code == 2, res.err
    assert res.error_lines[0].startswith(f"error: {out}: would replace the base model (model.base)")
    assert res.error_lines[0].endswith("an input is never replaced, not even with --force")
    assert len(res.error_lines) == 1
    assert base.read_bytes() == before


def test_export_over_an_existing_file_needs_force(trained_ws, capsys):
    out = trained_ws.root / "mine.safetensors"
    out.write_bytes(PRECIOUS)
    res = run_cli(capsys, "export", trained_ws.root, "--out", out)
    assert res.code == 2
    assert res.error_lines == [f"error: {out}: output exists"]
    assert "hint: use --force to replace it" in res.err
    assert out.read_bytes() == PRECIOUS
    res = run_cli(capsys, "export", trained_ws.root, "--out", out, "--force", "--json")
    assert res.code == 0, res.err
    assert read_header(out).metadata["modelspec.title"] == "tagtune-sdxl"


def test_export_into_the_run_record_or_a_state_is_refused(trained_ws, capsys):
    for out in (trained_ws.runs_dir / "run1" / "run.json", trained_ws.catalog_path):
        res = run_cli(capsys, "export", trained_ws.root, "--out", out, "--force")
        assert res.code == 2 and "an input is never replaced" in res.error_lines[0]
    state = trained_ws.runs_dir / "run1" / "main" / "states" / "step-2"
    res = run_cli(capsys, "export", trained_ws.root, "--out", state / "x.safetensors")
    assert "would replace the final state of stage 'main'" in res.error_lines[0]


def test_export_of_a_stage_whose_final_state_is_gone_is_an_error(trained_ws, capsys):
    state = trained_ws.runs_dir / "run1" / "main" / "states" / "step-2"
    shutil.rmtree(state)
    res = run_cli(capsys, "export", trained_ws.root)
    assert res.code == 2
    assert res.error_lines == [
        f"error: {state}: stage 'main' is complete but its final state is missing"
    ]
    assert not (trained_ws.out_dir / "tagtune-sdxl.safetensors").exists()
    state.mkdir()  # there, but never marked complete
    res = run_cli(capsys, "export", trained_ws.root)
    assert res.error_lines == [
        f"error: {state}: stage 'main' is complete but its final state is incomplete "
        "(no COMPLETE marker)"
    ]


def test_training_a_stage_after_one_whose_final_state_is_gone_is_an_error(trained_ws, capsys):
    state = trained_ws.runs_dir / "run1" / "main" / "states" / "step-2"
    shutil.rmtree(state)
    res = run_cli(capsys, "train", trained_ws.root, "--stage", "favorites")
    assert res.code == 2
    assert res.error_lines == [
        f"error: {state}: stage 'main' is complete but its final state is missing"
    ]
    assert not (trained_ws.runs_dir / "run1" / "favorites").exists()


def test_merge_needs_force_and_never_replaces_a_parent(tmp_path, capsys):
    a, b = _parent(tmp_path / "a.safetensors", 1), _parent(tmp_path / "b.safetensors", 2)
    out = tmp_path / "merged.safetensors"
    out.write_bytes(PRECIOUS)
    res = run_cli(capsys, "merge", a, b, "--out", out)
    assert res.code == 2 and res.error_lines == [f"error: {out}: output exists"]
    assert out.read_bytes() == PRECIOUS
    assert run_cli(capsys, "merge", a, b, "--out", out, "--force").code == 0
    assert set(read_header(out).tensors) == {U, VAE_KEY}
    link = tmp_path / "link.safetensors"
    link.symlink_to(b)
    before = b.read_bytes()
    for target in (b, link):
        res = run_cli(capsys, "merge", a, b, "--out", target, "--force")
        assert res.code == 2
        assert "would replace parent B" in res.error_lines[0]
    assert b.read_bytes() == before


def test_bake_vae_needs_force_and_never_replaces_the_checkpoint(tmp_path, capsys):
    ckpt = _parent(tmp_path / "ckpt.safetensors", 1)
    vae = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.ones(2, 2)}, vae)
    out = tmp_path / "baked.safetensors"
    out.write_bytes(PRECIOUS)
    res = run_cli(capsys, "bake-vae", ckpt, vae, out)
    assert res.code == 2 and res.error_lines == [f"error: {out}: output exists"]
    assert out.read_bytes() == PRECIOUS
    assert run_cli(capsys, "bake-vae", ckpt, vae, out, "--force").code == 0
    assert read_header(out).metadata["tagtune.baked_vae"] == "vae.safetensors"
    before = ckpt.read_bytes()
    for target in (ckpt, vae):
        res = run_cli(capsys, "bake-vae", ckpt, vae, target, "--force")
        assert res.code == 2 and "an input is never replaced" in res.error_lines[0]
    assert ckpt.read_bytes() == before


def test_convert_needs_force_and_replaces_only_a_model_folder(tmp_path, capsys, tiny_sdxl):
    src = save_single_file(tiny_sdxl, tmp_path / "tiny.safetensors")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(PRECIOUS)
    res = run_cli(capsys, "convert", src, folder)
    assert res.code == 2 and res.error_lines == [f"error: {folder}: output exists"]
    res = run_cli(capsys, "convert", src, folder, "--force")  # not a model: never replaced
    assert res.code == 2 and "is a folder that is not a diffusers model" in res.error_lines[0]
    assert (folder / "holiday.jpg").read_bytes() == PRECIOUS
    res = run_cli(capsys, "convert", src, tmp_path, "--force")  # holds the source
    assert res.code == 2 and "would replace the source model" in res.error_lines[0]
    model = tmp_path / "model"
    assert run_cli(capsys, "convert", src, model, "--dtype", "fp32").code == 0
    res = run_cli(capsys, "convert", src, model, "--dtype", "fp32")
    assert res.code == 2 and res.error_lines == [f"error: {model}: output exists"]
    assert run_cli(capsys, "convert", src, model, "--force").code == 0
    assert read_header(model / "unet" / "diffusion_pytorch_model.safetensors").tensors
    back = tmp_path / "back.safetensors"
    back.write_bytes(PRECIOUS)
    res = run_cli(capsys, "convert", model, back)
    assert res.code == 2 and back.read_bytes() == PRECIOUS
    res = run_cli(capsys, "convert", model, model / "unet" / "x.safetensors", "--force")
    assert res.code == 2 and "would replace the source model" in res.error_lines[0]


def test_tiny_model_and_init_need_force(tmp_path, capsys):
    out = tmp_path / "tiny.safetensors"
    out.write_bytes(PRECIOUS)
    res = run_cli(capsys, "tiny-model", out)
    assert res.code == 2 and out.read_bytes() == PRECIOUS
    assert run_cli(capsys, "tiny-model", out, "--force").code == 0
    assert read_header(out).metadata["tagtune.tiny_seed"] == "0"
    ws = tmp_path / "ws"
    assert run_cli(capsys, "init", ws).code == 0
    (ws / "tagtune.toml").write_text("# my recipe\n")
    res = run_cli(capsys, "init", ws)
    assert res.code == 2 and (ws / "tagtune.toml").read_text() == "# my recipe\n"
    assert run_cli(capsys, "init", ws, "--force").code == 0
    assert "[model]" in (ws / "tagtune.toml").read_text()


def test_charts_need_force_and_never_replace_the_catalog(tmp_path, capsys):
    from tagtune.core.errors import InputError
    from tagtune.prepare.run import bucket_chart

    ws = init_workspace(tmp_path / "ws")
    ws.catalog_path.write_bytes(PRECIOUS)
    res = run_cli(capsys, "tags", ws.root, "chart", "--out", ws.catalog_path, "--force")
    assert res.code == 2 and "would replace the catalog" in res.error_lines[0]
    chart = ws.out_dir / "tags.png"
    chart.write_bytes(PRECIOUS)
    res = run_cli(capsys, "tags", ws.root, "chart")
    assert res.code == 2 and res.error_lines == [f"error: {chart}: output exists"]
    assert ws.catalog_path.read_bytes() == PRECIOUS and chart.read_bytes() == PRECIOUS
    buckets = ws.out_dir / "buckets.png"
    buckets.write_bytes(PRECIOUS)
    with pytest.raises(InputError, match="output exists"):
        bucket_chart({(64, 64): 3}, buckets)
    with pytest.raises(InputError, match="would replace the recipe"):
        bucket_chart({(64, 64): 3}, ws.recipe_path, force=True, inputs=ws.inputs())
    bucket_chart({(64, 64): 3}, buckets, force=True)
    assert buckets.read_bytes()[:4] == b"\x89PNG"
