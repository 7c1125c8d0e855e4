"""merge-lora: the baked checkpoint equals the base with the LoRAs applied in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_main import run_cli
from tagtune.merge.lora_merge import merge_loras
from tagtune.models.load import load_model
from tagtune.models.lora_format import (
    LoraModule,
    apply_lora,
    kohya_name,
    parse_lora_ref,
    read_lora,
    write_lora,
)
from tagtune.models.safetensors_io import load_tensors, read_header, write_safetensors
from tagtune.models.save import save_single_file

NO_TOKENIZERS = (None, None)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rand(shape, g) -> torch.Tensor:
    return 0.05 * torch.randn(shape, generator=g)


def _modules(comps, g) -> dict[str, LoraModule]:
    """Updates on U-Net attention and feed-forward, a 3x3 conv, both encoders (q/k/v of 2)."""
    paths = [
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
        ("unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"),
        ("unet", "up_blocks.0.attentions.0.proj_in"),
        ("unet", "down_blocks.0.resnets.1.conv2"),
        ("te1", "text_model.encoder.layers.2.self_attn.out_proj"),
        ("te2", "text_model.encoder.layers.0.self_attn.q_proj"),
        ("te2", "text_model.encoder.layers.0.self_attn.k_proj"),
        ("te2", "text_model.encoder.layers.0.self_attn.v_proj"),
        ("te2", "text_model.encoder.layers.5.mlp.fc1"),
    ]
    parts = {"unet": comps.unet, "te1": comps.text_encoder, "te2": comps.text_encoder_2}
    out = {}
    for i, (component, path) in enumerate(paths):
        module = parts[component]
        if not hasattr(module, "text_model"):  # transformers 5 builds CLIPTextModel without it
            path = path.removeprefix("text_model.")
        w = module.get_submodule(path).weight
        rank = 1 + i % 3
        if w.ndim == 4:
            m = LoraModule(
                _rand((rank, w.shape[1], 3, 3), g), _rand((w.shape[0], rank, 1, 1), g), 1.0
            )
        else:
            m = LoraModule(
                _rand((rank, w.shape[1]), g), _rand((w.shape[0], rank), g), float(rank) / 2
            )
        out[kohya_name(component, path)] = m
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """base.safetensors (tiny, fp32), a.safetensors (kohya, fp16), b.safetensors (another
    trainer's: diffusers-path U-Net name, bf16, no alpha)."""
    from tagtune.models.tiny import build_tiny_sdxl

    folder = tmp_path_factory.mktemp("merge_lora")
    comps = build_tiny_sdxl(seed=4, tokenizers=NO_TOKENIZERS)
    base = save_single_file(comps, folder / "base.safetensors", dtype="fp32")
    g = torch.Generator().manual_seed(11)
    a = write_lora(folder / "a.safetensors", _modules(comps, g), {"ss_network_dim": "3"})
    path = "up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_v"
    w = comps.unet.get_submodule(path).weight
    b = folder / "b.safetensors"
    name = "lora_unet_" + path.replace(".", "_")
    write_safetensors(
        b,
        {
            f"{name}.lora_down.weight": _rand((2, w.shape[1]), g).bfloat16(),
            f"{name}.lora_up.weight": _rand((w.shape[0], 2), g).bfloat16(),
        },
    )
    return base, a, b


def test_baked_checkpoint_equals_the_lora_applied_in_memory(files, tmp_path, capsys):
    base, a, b = files
    out = tmp_path / "merged.safetensors"
    res = run_cli(capsys, "merge-lora", base, f"{a}:0.7", f"{b}:-1.5", "--out", out)
    assert res.code == 0, res.err
    merged = load_model(out, tokenizers=NO_TOKENIZERS)
    want = load_model(base, tokenizers=NO_TOKENIZERS)
    original = {k: v.clone() for k, v in want.unet.state_dict().items()}
    applied = apply_lora(want, [(read_lora(a)[0], 0.7), (read_lora(b)[0], -1.5)])
    assert len(applied) == 10
    for part in ("unet", "text_encoder", "text_encoder_2", "vae"):
        got, exp = getattr(merged, part).state_dict(), getattr(want, part).state_dict()
        for key in exp:
            assert torch.allclose(got[key], exp[key], atol=1e-6, rtol=0), (part, key)
    changed = [k for k, v in want.unet.state_dict().items() if not torch.equal(v, original[k])]
    assert len(changed) == 5  # 4 from a, 1 from b
    meta = read_header(out).metadata
    record = json.loads(meta["tagtune.merge_lora"])
    assert (
        record["checkpoint"]["file"] == "base.safetensors"
        and len(record["checkpoint"]["sha256"]) == 64
    )
    assert [(x["file"], x["strength"]) for x in record["loras"]] == [
        ("a.safetensors", 0.7),
        ("b.safetensors", -1.5),
    ]
    assert all(len(x["autov3"]) == 64 for x in record["loras"])
    assert meta["modelspec.hash_sha256"].startswith("0x") and "tagtune.configs" in meta
    assert "9 LoRA modules" in res.out or "10 LoRA modules" in res.out


def test_dtype_and_unchanged_tensors_are_copied_exactly(files, tmp_path):
    base, a, _ = files
    out = tmp_path / "half.safetensors"
    result = merge_loras(base, [(a, 1.0)], out, dtype="fp16", hash_parents=False)
    got, _ = load_tensors(out)
    orig, _ = load_tensors(base)
    assert result.changed == 7  # 9 modules; te2 q/k/v share one in_proj tensor
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    assert got[key].dtype == torch.float16 and torch.equal(got[key], orig[key].half())


def test_unmapped_loras_are_refused_on_one_line(files, tmp_path, capsys):
    base, a, _ = files
    bad = tmp_path / "sd15.safetensors"
    tensors = {}
    for i in range(8):
        tensors[f"lora_te_text_model_encoder_layers_{i}_mlp_fc1.lora_down.weight"] = torch.zeros(
            1, 4
        )
        tensors[f"lora_te_text_model_encoder_layers_{i}_mlp_fc1.lora_up.weight"] = torch.zeros(4, 1)
    write_safetensors(bad, tensors)
    out = tmp_path / "never.safetensors"
    res = run_cli(capsys, "merge-lora", base, a, bad, "--out", out)
    assert res.code == 2 and len(res.error_lines) == 1
    assert "8 LoRA modules match no module" in res.error_lines[0]
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1" in res.error_lines[0]
    assert "8 in all" in res.error_lines[0] and not out.exists()


def test_inputs_are_never_replaced(files, tmp_path, capsys):
    base, a, _ = files
    res = run_cli(capsys, "merge-lora", base, a, "--out", a, "--force")
    assert res.code == 2 and "never replaced" in res.error_lines[0]
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep")
    res = run_cli(capsys, "merge-lora", base, a, "--out", out)
    assert res.code == 2 and "exists" in res.error_lines[0] and out.read_bytes() == b"keep"


def test_parse_lora_ref():
    assert parse_lora_ref("x.safetensors") == (Path("x.safetensors"), 1.0)
    assert parse_lora_ref("x.safetensors:0.5") == (Path("x.safetensors"), 0.5)
    assert parse_lora_ref("dir:a/x.safetensors") == (Path("dir:a/x.safetensors"), 1.0)
    assert parse_lora_ref("x.safetensors:-1") == (Path("x.safetensors"), -1.0)
