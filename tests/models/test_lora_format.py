"""The kohya LoRA format: names (against the golden SDXL list), write/read, validation, apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tagtune.core.errors import InputError, ModelFileError
from tagtune.models.components import SDXLComponents
from tagtune.models.configs import sdxl_base_configs
from tagtune.models.load import empty_module
from tagtune.models.lora_format import (
    LoraModule,
    apply_lora,
    kohya_name,
    lora_delta,
    lora_targets,
    read_lora,
    write_lora,
)
from tagtune.models.safetensors_io import load_tensors, write_safetensors

GOLDEN = Path(__file__).parents[1] / "data" / "sdxl-lora-keys.tsv"


def golden() -> dict[str, tuple[str, str, str]]:
    """name -> (group, lora_down shape, lora_up shape) from the committed list."""
    rows = {}
    for line in GOLDEN.read_text().splitlines():
        if line.startswith("#") or line.startswith("name\t"):
            continue
        name, group, down, up, _target = line.split("\t")
        rows[name] = (group, down, up)
    return rows


def _components(unet, te1, te2) -> SDXLComponents:
    return SDXLComponents(unet, None, te1, te2, None, None)


@pytest.fixture
def tiny_components() -> SDXLComponents:
    """A fresh tiny model: these tests change its weights."""
    from tagtune.models.tiny import build_tiny_sdxl

    return build_tiny_sdxl(seed=5, tokenizers=(None, None))


@pytest.fixture(scope="module")
def full_size() -> SDXLComponents:
    """A full-size SDXL 1.0 base U-Net and both text encoders on the meta device (no memory)."""
    configs = sdxl_base_configs()
    return _components(
        empty_module("unet", configs["unet"]),
        empty_module("text_encoder", configs["text_encoder"]),
        empty_module("text_encoder_2", configs["text_encoder_2"]),
    )


def _shape_text(component, path, full: SDXLComponents) -> tuple[str, str]:
    module = getattr(
        full, {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}[component]
    )
    out, inp, *kernel = module.get_submodule(path).weight.shape
    down = "x".join(["r", str(inp), *map(str, kernel)])
    up = "x".join([str(out), "r", *(["1", "1"] if kernel else [])])
    return down, up


def test_full_size_targets_are_exactly_the_golden_kohya_names(full_size):
    gold = golden()
    plain = lora_targets(full_size)
    locon = lora_targets(full_size, convs=True)
    assert set(plain) == {n for n, (g, _, _) in gold.items() if g != "unet-conv"}
    assert set(locon) == set(gold)
    assert len(gold) == 722 + 66 + 72 + 192  # sd-scripts logs 722 U-Net, 72 + 192 TE modules
    for name, (component, path) in locon.items():
        assert _shape_text(component, path, full_size) == gold[name][1:], name


def test_targets_can_leave_out_parts(full_size):
    unet_only = lora_targets(full_size, text_encoders=False)
    te_only = lora_targets(full_size, unet=False)
    assert all(n.startswith("lora_unet_") for n in unet_only) and len(unet_only) == 722
    assert all(n.startswith("lora_te") for n in te_only) and len(te_only) == 264


def test_tiny_model_has_the_same_names(tiny_components):
    gold = golden()
    assert set(lora_targets(tiny_components, convs=True)) == set(gold)


def test_kohya_name_examples():
    assert (
        kohya_name("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
        == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    )
    assert (
        kohya_name("unet", "up_blocks.0.attentions.2.transformer_blocks.9.attn2.to_out.0")
        == "lora_unet_output_blocks_2_1_transformer_blocks_9_attn2_to_out_0"
    )
    assert (
        kohya_name("unet", "mid_block.resnets.1.conv2") == "lora_unet_middle_block_2_out_layers_3"
    )
    assert (
        kohya_name("te1", "text_model.encoder.layers.0.self_attn.q_proj")
        == "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    )
    assert (
        kohya_name("te2", "encoder.layers.31.mlp.fc2")
        == "lora_te2_text_model_encoder_layers_31_mlp_fc2"
    )
    with pytest.raises(ModelFileError, match="component"):
        kohya_name("vae", "encoder.conv_in")
    with pytest.raises(ModelFileError, match="no single-file name"):
        kohya_name("unet", "nonsense.layer")


def _module(out: int, inp: int, rank: int, alpha: float, kernel=(), seed: int = 0) -> LoraModule:
    g = torch.Generator().manual_seed(seed)
    down = torch.randn(rank, inp, *kernel, generator=g)
    up = torch.randn(out, rank, *([1, 1] if kernel else []), generator=g)
    return LoraModule(down=down, up=up, alpha=alpha)


def test_write_read_round_trip(tmp_path):
    mods = {
        "lora_unet_a": _module(8, 4, 2, 1.0),
        "lora_unet_b": _module(8, 4, 3, 3.0, kernel=(3, 3)),
        "lora_unet_c": LoraModule(
            down=torch.randn(2, 4, 1, 1),
            up=torch.randn(8, 2, 1, 1),
            alpha=1.0,
            mid=torch.randn(2, 2, 3, 3),
        ),
    }
    path = write_lora(tmp_path / "x.safetensors", mods, {"ss_network_dim": "2"})
    tensors, meta = load_tensors(path)
    assert meta == {"ss_network_dim": "2"}
    assert (
        tensors["lora_unet_a.alpha"].shape == ()
        and tensors["lora_unet_a.alpha"].dtype == torch.float16
    )
    assert tensors["lora_unet_b.lora_down.weight"].shape == (3, 4, 3, 3)
    assert "lora_unet_c.lora_mid.weight" in tensors
    back, meta2 = read_lora(path)
    assert meta2 == meta
    for name, m in mods.items():
        assert torch.equal(back[name].down, m.down.half()) and torch.equal(
            back[name].up, m.up.half()
        )
        assert back[name].alpha == m.alpha
    assert torch.equal(back["lora_unet_c"].mid, mods["lora_unet_c"].mid.half())
    with pytest.raises(InputError, match="exists"):
        write_lora(path, mods, {})
    write_lora(path, mods, {}, force=True, dtype=torch.float32)
    assert read_lora(path)[0]["lora_unet_a"].down.dtype == torch.float32


def _raw(tmp_path, tensors) -> Path:
    path = tmp_path / "other.safetensors"
    write_safetensors(path, tensors)
    return path


def test_read_accepts_other_trainers_layouts(tmp_path):
    d, u = torch.randn(4, 6, dtype=torch.bfloat16), torch.randn(5, 4, dtype=torch.bfloat16)
    path = _raw(
        tmp_path,
        {
            "lora_unet_x.lora_down.weight": d,
            "lora_unet_x.lora_up.weight": u,
            "lora_unet_x.alpha": torch.tensor([2.0]),  # 1-element, fp32
            "lora_unet_y.lora_down.weight": d,
            "lora_unet_y.lora_up.weight": u,  # no alpha: alpha = rank
        },
    )
    mods, _ = read_lora(path)
    assert mods["lora_unet_x"].alpha == 2.0 and mods["lora_unet_x"].scale == 0.5
    assert mods["lora_unet_y"].alpha == 4.0 and mods["lora_unet_y"].scale == 1.0


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        (
            {
                "a.lora_down.weight": torch.zeros(2, 3),
                "a.lora_up.weight": torch.zeros(4, 2),
                "a.dora_scale": torch.zeros(4, 1),
                "b.hada_w1_a": torch.zeros(2, 2),
            },
            r"2 tensors with no known suffix \(first: a.dora_scale, b.hada_w1_a \(2 in all\)\)",
        ),
        ({"a.lora_down.weight": torch.zeros(2, 3)}, "1 modules lack lora_down or lora_up"),
        (
            {"a.lora_down.weight": torch.zeros(2, 3), "a.lora_up.weight": torch.zeros(4, 3)},
            "rank differs",
        ),
        (
            {
                "a.lora_down.weight": torch.zeros(2, 3),
                "a.lora_up.weight": torch.zeros(4, 2),
                "a.alpha": torch.zeros(2),
            },
            "alpha must be one number",
        ),
        (
            {"a.lora_down.weight": torch.zeros(2, 3), "a.lora_up.weight": torch.zeros(4, 2, 3, 3)},
            "not 2-D or 4-D",
        ),
        ({}, "no LoRA module"),
    ],
)
def test_read_refuses_what_it_cannot_use(tmp_path, tensors, match):
    with pytest.raises(ModelFileError, match=match) as info:
        read_lora(_raw(tmp_path, tensors))
    assert "\n" not in str(info.value)


def test_apply_adds_the_scaled_update(tiny_components):
    comps = tiny_components
    q_path = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    conv_path = "down_blocks.0.resnets.0.conv1"
    fc_path = "text_model.encoder.layers.3.mlp.fc1"
    q = comps.unet.get_submodule(q_path).weight
    conv = comps.unet.get_submodule(conv_path).weight
    fc = comps.text_encoder_2.get_submodule(fc_path).weight
    before = [t.detach().clone() for t in (q, conv, fc)]
    mods = {
        kohya_name("unet", q_path): _module(q.shape[0], q.shape[1], 2, 1.0, seed=1),
        kohya_name("unet", conv_path): _module(
            conv.shape[0], conv.shape[1], 3, 1.5, kernel=(3, 3), seed=2
        ),
        kohya_name("te2", fc_path): _module(fc.shape[0], fc.shape[1], 4, 2.0, seed=3),
    }
    applied = apply_lora(comps, [(mods, 0.5)])
    assert sorted(applied) == sorted(mods)
    qm = mods[kohya_name("unet", q_path)]
    assert torch.allclose(q, before[0] + 0.5 * 0.5 * (qm.up @ qm.down), atol=1e-6)
    cm = mods[kohya_name("unet", conv_path)]
    want = before[1] + 0.5 * 0.5 * (cm.up.flatten(1) @ cm.down.flatten(1)).reshape(conv.shape)
    assert torch.allclose(conv, want, atol=1e-6)
    fm = mods[kohya_name("te2", fc_path)]
    assert torch.allclose(fc, before[2] + 0.5 * 0.5 * (fm.up @ fm.down), atol=1e-6)
    # the opposite strength undoes it
    apply_lora(comps, [(mods, -0.5)])
    for t, b in zip((q, conv, fc), before, strict=True):
        assert torch.allclose(t, b, atol=1e-5)


def test_apply_maps_diffusers_path_unet_names(tiny_components):
    path = "up_blocks.0.attentions.1.transformer_blocks.2.ff.net.2"
    w = tiny_components.unet.get_submodule(path).weight
    before = w.detach().clone()
    m = _module(w.shape[0], w.shape[1], 2, 2.0, seed=4)
    applied = apply_lora(tiny_components, [({"lora_unet_" + path.replace(".", "_"): m}, 1.0)])
    assert applied == [kohya_name("unet", path)]
    assert torch.allclose(w, before + m.up @ m.down, atol=1e-6)
    apply_lora(tiny_components, [({"lora_unet_" + path.replace(".", "_"): m}, -1.0)])


def test_apply_refuses_unmapped_names_and_changes_nothing(tiny_components):
    path = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"
    w = tiny_components.unet.get_submodule(path).weight
    before = w.detach().clone()
    good = _module(w.shape[0], w.shape[1], 2, 1.0)
    mods = {kohya_name("unet", path): good}
    mods.update({f"lora_te_text_model_encoder_layers_{i}_mlp_fc1": good for i in range(7)})
    with pytest.raises(ModelFileError, match=r"7 LoRA modules match no module .*\(7 in all\)"):
        apply_lora(tiny_components, [(mods, 1.0)])
    assert torch.equal(w, before)
    wrong = {kohya_name("unet", path): _module(w.shape[0] + 1, w.shape[1], 2, 1.0)}
    with pytest.raises(ModelFileError, match="does not fit"):
        apply_lora(tiny_components, [(wrong, 1.0)])
    assert torch.equal(w, before)


def test_tucker_mid_delta_matches_the_dense_product():
    g = torch.Generator().manual_seed(0)
    down, mid, up = (
        torch.randn(3, 5, 1, 1, generator=g),
        torch.randn(3, 3, 3, 3, generator=g),
        torch.randn(7, 3, 1, 1, generator=g),
    )
    m = LoraModule(down=down, up=up, alpha=1.5, mid=mid)
    want = torch.zeros(7, 5, 3, 3)
    for h in range(3):
        for w in range(3):
            want[:, :, h, w] = up.flatten(1) @ mid[:, :, h, w] @ down.flatten(1)
    assert torch.allclose(lora_delta(m, (7, 5, 3, 3)), 0.5 * want, atol=1e-5)


def test_golden_header_says_how_it_was_made():
    head = [line for line in GOLDEN.read_text().splitlines() if line.startswith("#")]
    assert any("scripts/sdxl_lora_keys.py" in line for line in head)
    json.dumps(golden())  # parseable rows
