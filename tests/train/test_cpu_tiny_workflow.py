"""A CPU user's first hour: `init --profile cpu-tiny --base` to a trained export, recipe untouched."""

from __future__ import annotations

import json

import pytest

from cli_main import run_cli
from tagtune.synthetic.collection import write_collection


@pytest.mark.slow
def test_cpu_tiny_profile_runs_the_whole_workflow_without_editing_the_recipe(tmp_path, capsys):
    from tagtune.models.safetensors_io import read_header

    tiny, ws = tmp_path / "tiny.safetensors", tmp_path / "ws"
    source = write_collection(tmp_path / "collection", 4, broken=False)
    assert run_cli(capsys, "tiny-model", tiny).code == 0
    init = run_cli(capsys, "init", ws, "--base", tiny, "--profile", "cpu-tiny")
    assert init.code == 0, init.err
    recipe = (ws / "tagtune.toml").read_text()
    assert f'base = "{tiny}"' in recipe  # outside the workspace: absolute
    before = recipe

    steps = [
        ("ingest", ws, source["folder"], "--favorites", source["favorites_file"]),
        ("caption", ws),
        ("prepare", ws, "--workers", "0", "--json"),
    ]
    for args in steps:
        res = run_cli(capsys, *args)
        assert res.code == 0, (args, res.err)
    dry = run_cli(capsys, "train", ws, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    planned = json.loads(dry.out)
    assert planned["resolution"] == "128x128" and planned["problems"] == []
    res = run_cli(capsys, "train", ws, "--json")
    assert res.code == 0, res.err
    ran = json.loads(res.out.strip().splitlines()[-1])["ran"]
    assert [(s["name"], s["images"], s["steps"]) for s in ran] == [
        (s["name"], s["images"], s["steps"]) for s in planned["stages"]
    ]  # the dry run counted what training did
    res = run_cli(capsys, "export", ws, "--json")
    assert res.code == 0, res.err
    exported = json.loads(res.out)["path"]
    assert read_header(exported).metadata["modelspec.resolution"] == "128x128"
    assert (ws / "tagtune.toml").read_text() == before


def test_init_base_inside_the_workspace_is_relative_and_must_be_a_model(tmp_path, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    assert run_cli(capsys, "tiny-model", ws / "models" / "tiny.safetensors").code == 0
    res = run_cli(capsys, "init", ws, "--base", ws / "models" / "tiny.safetensors")
    assert res.code == 0, res.err
    assert 'base = "models/tiny.safetensors"' in (ws / "tagtune.toml").read_text()

    not_model = tmp_path / "notes.safetensors"
    not_model.write_bytes(b"hello")
    res = run_cli(capsys, "init", tmp_path / "ws2", "--base", not_model)
    assert res.code == 2 and len(res.error_lines) == 1
    assert res.error_lines[0].startswith(f"error: {not_model}: too short for a safetensors file")
    assert not (tmp_path / "ws2").exists()  # nothing written
    res = run_cli(capsys, "init", tmp_path / "ws3", "--base", tmp_path / "missing.safetensors")
    assert res.error_lines == [
        f"error: {tmp_path / 'missing.safetensors'}: model.base: no such file or folder"
    ]
    res = run_cli(capsys, "init", tmp_path / "ws4", "--profile", "huge")
    assert res.error_lines == [
        "error: --profile = 'huge': unknown profile (allowed: reference, 24gb, cpu-tiny)"
    ]
