"""bake-vae: every first_stage_model.* tensor replaced from a VAE in any common layout."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from tagtune.cli.main import app
from tagtune.core.errors import InputError, ModelFileError
from tagtune.models.hashes import file_hashes
from tagtune.models.safetensors_io import load_tensors, read_header, write_safetensors
from tagtune.models.save import save_diffusers, save_single_file
from tagtune.models.vae_bake import bake_vae

PREFIX = "first_stage_model."


@pytest.fixture(scope="module")
def files(tiny_sdxl, tmp_path_factory):
    """Base checkpoint (seed 0, fp16) and a second model (seed 1) to take the VAE from."""
    from tagtune.models.tiny import build_tiny_sdxl

    root = tmp_path_factory.mktemp("bake")
    base = save_single_file(tiny_sdxl, root / "base.safetensors")
    other = build_tiny_sdxl(seed=1, tokenizers=(tiny_sdxl.tokenizer, tiny_sdxl.tokenizer_2))
    other_single = save_single_file(other, root / "other.safetensors", dtype="fp32")
    other_folder = save_diffusers(other, root / "other-diffusers")
    state, _ = load_tensors(other_single)
    vae = {k: v for k, v in state.items() if k.startswith(PREFIX)}
    bare = root / "bare-vae.safetensors"
    write_safetensors(bare, {k.removeprefix(PREFIX): v for k, v in vae.items()})
    return {"base": base, "single": other_single, "folder": other_folder, "bare": bare, "vae": vae}


def check_baked(files, out):
    before, _ = load_tensors(files["base"])
    after, meta = load_tensors(out)
    assert before.keys() == after.keys()
    for k, v in after.items():
        if k.startswith(PREFIX):
            assert v.dtype == before[k].dtype  # keeps the checkpoint's precision
            assert torch.equal(v, files["vae"][k].to(v.dtype)), k
        else:
            assert torch.equal(v, before[k]), k
    assert meta["modelspec.hash_sha256"] == "0x" + file_hashes(out)["autov3"]
    return meta


@pytest.mark.parametrize(
    "source",
    ["folder", "folder/vae", "single", "bare", "folder/vae/diffusion_pytorch_model.safetensors"],
)
def test_bake_replaces_every_vae_tensor_from_any_layout(files, tmp_path, source):
    root, _, rest = source.partition("/")
    vae = files[root] / rest if rest else files[root]
    out = tmp_path / "baked.safetensors"
    result = bake_vae(files["base"], vae, out)
    assert result.replaced == 248 and result.changed > 0
    meta = check_baked(files, out)
    assert meta["tagtune.baked_vae"] == vae.name
    weights = vae if vae.is_file() else files["folder"] / "vae/diffusion_pytorch_model.safetensors"
    hashes = file_hashes(weights)  # the VAE's weights file, whatever layout names it
    assert meta["tagtune.baked_vae_sha256"] == hashes["sha256"]
    assert meta["tagtune.baked_vae_autov2"] == hashes["autov2"]


def test_baking_in_place_is_refused_even_with_force(files, tmp_path):
    target = tmp_path / "ckpt.safetensors"
    target.write_bytes(files["base"].read_bytes())
    with pytest.raises(InputError, match="would replace the checkpoint; an input is never"):
        bake_vae(target, files["bare"], target, force=True)
    assert target.read_bytes() == files["base"].read_bytes()


def test_wrong_shaped_vae_is_refused_and_nothing_is_written(files, tmp_path):
    bad = {k.removeprefix(PREFIX): v for k, v in files["vae"].items()}
    bad["decoder.conv_in.weight"] = torch.zeros(16, 4, 3, 3)
    path = tmp_path / "wide-vae.safetensors"
    write_safetensors(path, bad)
    out = tmp_path / "out.safetensors"
    with pytest.raises(ModelFileError) as err:
        bake_vae(files["base"], path, out)
    assert str(err.value) == (
        f"{path}: first_stage_model.decoder.conv_in.weight: VAE tensor shape [16, 4, 3, 3] "
        "does not match the checkpoint's [32, 4, 3, 3] (a VAE of another model?)"
    )
    assert not out.exists()


def test_vae_with_missing_tensors_is_refused(files, tmp_path):
    partial = {
        k.removeprefix(PREFIX): v for k, v in files["vae"].items() if "decoder.up.0." not in k
    }
    path = tmp_path / "partial.safetensors"
    write_safetensors(path, partial)
    with pytest.raises(
        ModelFileError,
        match=r"VAE does not fit the checkpoint: \d+ tensors missing, 0 unexpected \(first: decoder.up.0.block.0.conv1.bias\)",
    ):
        bake_vae(files["base"], path, tmp_path / "out.safetensors")


def test_file_without_vae_is_refused(files, tmp_path):
    path = tmp_path / "novae.safetensors"
    write_safetensors(path, {"something.else": torch.ones(1)})
    with pytest.raises(ModelFileError, match="holds no VAE tensors"):
        bake_vae(files["base"], path, tmp_path / "out.safetensors")


def test_cli_bake_vae(files, tmp_path):
    out = tmp_path / "baked.safetensors"
    result = CliRunner().invoke(app, ["bake-vae", str(files["base"]), str(files["bare"]), str(out)])
    assert result.exit_code == 0, result.output
    assert "248 VAE tensors replaced" in result.stdout
    assert read_header(out).metadata["tagtune.baked_vae"] == "bare-vae.safetensors"
