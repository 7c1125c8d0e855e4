"""The single-file key layout against the real SDXL 1.0 base key list (tests/data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tagtune.models.components import SDXLComponents
from tagtune.models.save import single_file_state_dict

KEYS_TSV = Path(__file__).parents[1] / "data" / "sdxl-base-keys.tsv"
OPTIONAL = {
    "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
    "conditioner.embedders.1.model.logit_scale",
}


def reference_keys() -> dict[str, tuple[int, ...]]:
    """Required names and shapes of the full-size layout (optional ones are not written)."""
    out = {}
    lines = [ln for ln in KEYS_TSV.read_text().splitlines() if ln and not ln.startswith("#")]
    for line in lines[1:]:
        name, shape, required = line.split("\t")
        if required == "yes":
            out[name] = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
    return out


def test_reference_list_has_the_published_counts():
    ref = reference_keys()
    assert len(ref) == 2513
    counts = {
        p: sum(k.startswith(p) for k in ref)
        for p in (
            "model.diffusion_model.",
            "first_stage_model.",
            "conditioner.embedders.0.",
            "conditioner.embedders.1.",
        )
    }
    assert list(counts.values()) == [1680, 248, 196, 389]


@pytest.fixture(scope="module")
def full_size_export() -> dict[str, torch.Tensor]:
    """Full-size SDXL built on the meta device from the packaged configs (no memory, no init)."""
    from tagtune.models.configs import sdxl_base_configs
    from tagtune.models.load import empty_module

    configs = sdxl_base_configs()
    mods = {
        n: empty_module(n, configs[n]) for n in ("unet", "vae", "text_encoder", "text_encoder_2")
    }
    return single_file_state_dict(SDXLComponents(**mods, tokenizer=None, tokenizer_2=None))


def test_full_size_export_matches_real_names_and_shapes_exactly(full_size_export):
    ours = {k: tuple(v.shape) for k, v in full_size_export.items()}
    ref = reference_keys()
    assert sorted(set(ours) - set(ref)) == []
    assert sorted(set(ref) - set(ours)) == []
    assert {k: s for k, s in ours.items() if s != ref[k]} == {}


def test_tiny_export_has_every_real_name_and_scaled_shapes(tiny_sdxl):
    ours = {k: tuple(v.shape) for k, v in single_file_state_dict(tiny_sdxl).items()}
    ref = reference_keys()
    assert set(ours) == set(ref)
    assert not OPTIONAL & set(ours)
    assert {k for k in ref if len(ours[k]) != len(ref[k])} == set()
    # dimensions that must not scale: vocabulary, positions, image/latent channels, 1x1 / 3x3 kernels
    for k in (
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.1.model.token_embedding.weight",
    ):
        assert ours[k][0] == 49408
    for k in (
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
        "conditioner.embedders.1.model.positional_embedding",
    ):
        assert ours[k][0] == 77
    for k, shape in ref.items():
        if len(shape) == 4:
            assert ours[k][2:] == shape[2:], k
        if shape and shape[0] in (3, 4, 8):  # image and latent channels
            assert ours[k][0] == shape[0], k


def test_text_encoder_1_keys_keep_the_text_model_prefix(tiny_sdxl):
    names = single_file_state_dict(tiny_sdxl)
    te1 = [k for k in names if k.startswith("conditioner.embedders.0.")]
    assert len(te1) == 196
    assert all(k.startswith("conditioner.embedders.0.transformer.text_model.") for k in te1)


def test_open_clip_in_proj_is_q_k_v_fused_and_text_projection_transposed(tiny_sdxl):
    sd = single_file_state_dict(tiny_sdxl)
    te2 = tiny_sdxl.text_encoder_2.state_dict()
    layer = "text_model.encoder.layers.3.self_attn."
    fused = sd["conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_weight"]
    expected = torch.cat([te2[layer + p + ".weight"] for p in ("q_proj", "k_proj", "v_proj")])
    assert torch.equal(fused, expected)
    bias = sd["conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_bias"]
    assert torch.equal(
        bias, torch.cat([te2[layer + p + ".bias"] for p in ("q_proj", "k_proj", "v_proj")])
    )
    proj = sd["conditioner.embedders.1.model.text_projection"]
    assert torch.equal(proj, te2["text_projection.weight"].T)
    assert tuple(proj.shape) == (48, 40)  # [hidden, projection], as OpenCLIP stores it


def test_vae_mid_attention_weights_are_1x1_convs(tiny_sdxl):
    sd = single_file_state_dict(tiny_sdxl)
    for part in ("encoder", "decoder"):
        for proj in ("q", "k", "v", "proj_out"):
            w = sd[f"first_stage_model.{part}.mid.attn_1.{proj}.weight"]
            assert w.ndim == 4 and w.shape[2:] == (1, 1)
