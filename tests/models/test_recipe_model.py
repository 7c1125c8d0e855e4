"""One loader for the recipe's model: the fix VAE (`model.vae`) is baked in for prepare,
train and export alike, the latent cache is keyed by it, and the export, run.json, the
header and the card carry and name it."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
import torch

from diffusers_reads import diffusers_reads
from tagtune.core.catalog import open_catalog
from tagtune.core.errors import ModelFileError, WorkspaceError
from tagtune.models.hashes import file_hashes
from tagtune.models.recipe_model import load_recipe_model
from tagtune.models.safetensors_io import read_header, write_safetensors
from tagtune.models.save import save_single_file
from tagtune.prepare.encode import PrepareItem, encode_images, vae_fingerprint
from tagtune.recipe.model import BucketConfig
from tagtune.recipe.workspace import workspace_recipe
from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
from tagtune.train.stages import run_training

FROZEN_TE = {"lr_text_encoder": 0.0, "lr_text_encoder_2": 0.0}
BUCKETS = BucketConfig(resolution=64, min_side=64, max_side=64, step=64)


def _add_images(ws, n: int) -> list[PrepareItem]:
    """n 64x64 shape images for posts 1..n, in the catalog's files table."""
    from tagtune.synthetic.collection import shape_image

    rng = np.random.default_rng(0)
    items = []
    with open_catalog(ws.catalog_path) as con:
        for i in range(1, n + 1):
            img, _ = shape_image(rng, (64, 64))
            path = ws.root / "images" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            con.execute(
                "INSERT INTO files (post_id, path, sha256, width, height) VALUES (?, ?, ?, ?, ?)",
                [i, f"images/{i}.png", sha, 64, 64],
            )
            items.append(PrepareItem(i, str(path), sha, 64, 64))
    return items


def _fix_vae(seed: int = 7):
    """A VAE of the tiny model's shape with other weights: the "fixed VAE" to bake in."""
    from tagtune.models.tiny import build_tiny_sdxl

    return build_tiny_sdxl(seed).vae


def _workspace(tmp_path, tiny_sdxl, vae: str = "", n: int = 4, **stage):
    recipe = tiny_train_recipe(epochs=1, batch_size=2, **{**FROZEN_TE, **stage})
    recipe.model.base = "base.safetensors"
    recipe.model.vae = vae
    recipe.buckets = BUCKETS
    recipe.export.dtype = "fp32"
    ws, _ = make_training_workspace(tmp_path / "ws", recipe, n=n)
    save_single_file(tiny_sdxl, ws.root / "base.safetensors", dtype="fp32")
    return ws


def _equal_states(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


def test_the_loader_bakes_a_single_file_vae_in_and_names_it(tmp_path, tiny_sdxl):
    from tagtune.models.keys import vae_diffusers_to_ldm_unprefixed

    fix = _fix_vae()
    bare = vae_diffusers_to_ldm_unprefixed(fix.state_dict(), fix.config)
    ws = _workspace(tmp_path, tiny_sdxl, vae="vaes/fix.safetensors")
    (ws.root / "vaes").mkdir()
    write_safetensors(ws.root / "vaes/fix.safetensors", {k: v.half() for k, v in bare.items()})

    model = load_recipe_model(ws)
    assert _equal_states(model.vae, fix.half())  # every VAE tensor is the fix VAE's
    assert next(model.vae.parameters()).dtype == torch.float32  # held in fp32, as loaded
    assert _equal_states(model.unet, tiny_sdxl.unet)  # the rest is the base
    src = model.vae_source
    hashes = file_hashes(ws.root / "vaes/fix.safetensors")
    assert (src.path, src.name, src.sha256, src.autov2) == (
        "vaes/fix.safetensors", "fix.safetensors", hashes["sha256"], hashes["autov2"],
    )  # fmt: skip
    assert src.fingerprint == vae_fingerprint(fix.half())  # the fp16 values, fp32-held
    recipe = workspace_recipe(ws)
    recipe.model.vae = ""
    plain = load_recipe_model(ws, recipe)
    assert (plain.vae_source.path, plain.vae_source.fingerprint) == (
        "", vae_fingerprint(tiny_sdxl.vae),
    )  # fmt: skip


def test_the_loader_refuses_a_vae_of_another_shape_and_a_missing_base(tmp_path, tiny_sdxl):
    from tagtune.models.keys import vae_diffusers_to_ldm_unprefixed

    ws = _workspace(tmp_path, tiny_sdxl, vae="wide.safetensors")
    bare = vae_diffusers_to_ldm_unprefixed(_fix_vae().state_dict(), tiny_sdxl.vae.config)
    bare["decoder.conv_in.weight"] = torch.zeros(16, 4, 3, 3)
    write_safetensors(ws.root / "wide.safetensors", bare)
    with pytest.raises(ModelFileError) as err:
        load_recipe_model(ws)
    assert str(err.value) == (
        f"{ws.root / 'wide.safetensors'}: first_stage_model.decoder.conv_in.weight: VAE tensor "
        "shape [16, 4, 3, 3] does not match the checkpoint's [32, 4, 3, 3] (a VAE of another "
        "model?)"
    )
    recipe = workspace_recipe(ws)
    recipe.model.base = ""
    with pytest.raises(WorkspaceError) as err:
        load_recipe_model(ws, recipe)
    assert str(err.value) == f"{ws.recipe_path}: model.base: no base model in the recipe"


def test_bf16_training_finds_the_cache_prepare_wrote_in_fp32(tmp_path, tiny_sdxl):
    """The VAE is neither cast nor moved for training: its fingerprint is prepare's."""
    ws = _workspace(tmp_path, tiny_sdxl, n=2)
    recipe = workspace_recipe(ws)
    recipe.train.weight_dtype = "bf16"
    from tagtune.recipe.workspace import init_workspace

    init_workspace(ws.root, recipe, force=True)
    encode_images(_add_images(ws, 2), tiny_sdxl.vae, ws.cache_dir, BUCKETS, workers=0)
    comps = copy.deepcopy(tiny_sdxl)
    summary = run_training(ws, components=comps, progress=False)
    assert summary.ran[0]["steps"] == 1
    assert next(comps.unet.parameters()).dtype == torch.bfloat16
    vae_weight = next(comps.vae.parameters())
    assert (vae_weight.dtype, vae_weight.device.type) == (torch.float32, "cpu")
    run = json.loads((ws.runs_dir / "run1" / "run.json").read_text())
    assert run["stages"][0]["inputs"]["latents_vae"] == vae_fingerprint(tiny_sdxl.vae)


@pytest.mark.slow
def test_prepare_train_and_export_carry_the_fix_vae_and_the_card_names_it(tmp_path, tiny_sdxl):
    from tagtune.card import render_card
    from tagtune.models.save import save_diffusers
    from tagtune.prepare.run import prepare_workspace
    from tagtune.train.export import export_model

    fix = _fix_vae()
    ws = _workspace(tmp_path, tiny_sdxl, vae="fix-vae")
    fix.save_pretrained(ws.root / "fix-vae")  # a diffusers VAE folder
    _add_images(ws, 4)

    prepared = prepare_workspace(ws, workers=0, rank=0, world_size=1)
    assert (prepared.encoded, prepared.vae_hash) == (4, vae_fingerprint(fix))
    summary = run_training(ws, progress=False)  # finds the fix VAE's latents: no "prepare" hint
    assert summary.ran[0]["images"] == 4
    exported = export_model(ws)

    pipe, complaints = diffusers_reads(exported.path, save_diffusers(tiny_sdxl, tmp_path / "cfg"))
    assert complaints == []
    assert _equal_states(pipe.vae, fix)  # the export carries the fix VAE, every tensor
    assert not _equal_states(pipe.vae, tiny_sdxl.vae)

    weights = ws.root / "fix-vae" / "diffusion_pytorch_model.safetensors"
    hashes = file_hashes(weights)
    meta = read_header(exported.path).metadata
    assert meta["tagtune.baked_vae"] == "fix-vae"
    assert meta["tagtune.baked_vae_sha256"] == hashes["sha256"]
    assert meta["tagtune.baked_vae_autov2"] == hashes["autov2"]
    run = json.loads((ws.runs_dir / "run1" / "run.json").read_text())
    named = {"path": "fix-vae", "name": "fix-vae", "sha256": hashes["sha256"],
             "autov2": hashes["autov2"], "fingerprint": vae_fingerprint(fix)}  # fmt: skip
    assert run["vae"] == named and run["export"]["vae"] == named
    assert run["stages"][0]["inputs"]["latents_vae"] == vae_fingerprint(fix)
    card = render_card(run, ("all", ["smile"]), exported.path.name, exported.hashes)
    assert f"| VAE | fix-vae (AutoV2 `{hashes['autov2']}`) |" in card
