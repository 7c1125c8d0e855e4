"""Merging real tiny single-file SDXL checkpoints: the result loads and generates."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from tagtune.cli.main import app
from tagtune.generate.infotext import read_png_infotext
from tagtune.merge.checkpoints import MergeSpec, merge_checkpoints

load = pytest.importorskip("tagtune.models.load")
save = pytest.importorskip("tagtune.models.save")


@pytest.fixture(scope="module")
def tiny_pair(tiny_sdxl, tmp_path_factory):
    """A: the tiny model as a single file; B: the same file with every float tensor shifted."""
    root = tmp_path_factory.mktemp("tiny_pair")
    a = save.save_single_file(tiny_sdxl, root / "a.safetensors", dtype="fp32")
    with safe_open(str(a), "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration
    b_sd = {k: v + 0.01 if v.is_floating_point() else v for k, v in sd.items()}
    save_file(b_sd, str(root / "b.safetensors"), metadata=meta)
    return a, root / "b.safetensors", sd, b_sd


def test_merged_tiny_checkpoint_loads_with_the_blended_weights(tiny_pair, tmp_path):
    a, b, sd_a, sd_b = tiny_pair
    out = tmp_path / "m.safetensors"
    blocks = tuple(0.0 if i < 11 else 1.0 for i in range(20))  # BASE, IN*, M00 from A; OUT* from B
    res = merge_checkpoints(a, b, out, MergeSpec(blocks=blocks))
    assert res.tensors == len(sd_a)
    comps = load.load_model(out)
    unet = comps.unet.state_dict()
    assert torch.equal(
        unet["conv_in.weight"], sd_a["model.diffusion_model.input_blocks.0.0.weight"]
    )
    assert torch.equal(unet["conv_out.weight"], sd_b["model.diffusion_model.out.2.weight"])


def test_cli_generate_from_a_merged_file(tiny_pair, tmp_path):
    a, b, _, _ = tiny_pair
    out = tmp_path / "merged.safetensors"
    runner = CliRunner()
    res = runner.invoke(app, ["merge", str(a), str(b), "--alpha", "0.5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    args = ["generate", str(out), "1girl, smile", "--steps", "1", "--size", "64x64", "--seed", "3"]
    res = runner.invoke(app, [*args, "--clip-skip", "2", "--out", str(tmp_path / "img"), "--json"])
    assert res.exit_code == 0, res.output
    info = read_png_infotext(json.loads(res.stdout)["images"][0])
    assert info.model == "merged"
    assert info.model_hash == hashlib.sha256(out.read_bytes()).hexdigest()[:10]
    assert info.clip_skip == 2
