"""generate --lora: applied in memory (the caller's model untouched), recorded as A1111 does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from cli_main import run_cli
from tagtune.core.errors import InputError, ModelFileError
from tagtune.generate.infotext import format_infotext, read_png_infotext
from tagtune.generate.pipeline import generate, params_from_png
from tagtune.models.hashes import file_hashes
from tagtune.models.lora_format import LoraModule, apply_lora, kohya_name, read_lora, write_lora
from tagtune.models.safetensors_io import write_safetensors
from tagtune.models.save import save_single_file

PATHS = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
    "up_blocks.1.attentions.0.proj_out",
]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def lora(tiny_sdxl, tmp_path_factory):
    """A kohya LoRA on three U-Net modules of the tiny model, big enough to change images."""
    g = torch.Generator().manual_seed(21)
    modules = {}
    for path in PATHS:
        w = tiny_sdxl.unet.get_submodule(path).weight
        modules[kohya_name("unet", path)] = LoraModule(
            torch.randn(2, w.shape[1], generator=g), torch.randn(w.shape[0], 2, generator=g), 2.0
        )
    return write_lora(tmp_path_factory.mktemp("lora") / "style.safetensors", modules, {})


def _run(model, out, **kw):
    return generate(model, "smile", steps=2, size="64x64", seed=5, out_dir=out, **kw)


def test_lora_is_applied_in_memory_and_recorded(tiny_sdxl, lora, tmp_path):
    before = {k: v.clone() for k, v in tiny_sdxl.unet.state_dict().items()}
    with_lora = _run(tiny_sdxl, tmp_path / "a", loras=[(lora, 0.8)])
    assert all(torch.equal(v, before[k]) for k, v in tiny_sdxl.unet.state_dict().items())
    plain = _run(tiny_sdxl, tmp_path / "b")
    assert not np.array_equal(pixels(with_lora[0]), pixels(plain[0]))
    merged = copy.deepcopy(tiny_sdxl)
    apply_lora(merged, [(read_lora(lora)[0], 0.8)])
    by_hand = _run(merged, tmp_path / "c")
    assert np.array_equal(pixels(with_lora[0]), pixels(by_hand[0]))

    info = read_png_infotext(with_lora[0])
    short = file_hashes(lora)["autov3"][:12]
    assert info.prompt == "smile <lora:style:0.8>"
    assert info.extra == {"Lora hashes": f"style: {short}"}
    assert f'Lora hashes: "style: {short}"' in format_infotext(info)


def test_from_png_needs_the_loras_again_and_then_reproduces(tiny_sdxl, lora, tmp_path):
    first = _run(tiny_sdxl, tmp_path / "a", loras=[(lora, 0.8)])
    with pytest.raises(InputError, match=r"made with LoRAs style x 0\.8"):
        params_from_png(first[0])
    params = params_from_png(first[0], loras_given=True)
    assert params["prompt"] == "smile"
    again = generate(tiny_sdxl, out_dir=tmp_path / "b", loras=[(lora, 0.8)], **params)
    assert np.array_equal(pixels(again[0]), pixels(first[0]))


def test_sshs_model_hash_is_the_short_hash_when_present(tiny_sdxl, lora, tmp_path):
    modules, _ = read_lora(lora)
    other = write_lora(tmp_path / "b,c.safetensors", modules, {"sshs_model_hash": "ABCDEF" * 11})
    paths = _run(tiny_sdxl, tmp_path / "o", loras=[(lora, 1.0), (other, -0.5)])
    info = read_png_infotext(paths[0])
    assert info.prompt == "smile <lora:style:1> <lora:bc:-0.5>"
    assert info.extra["Lora hashes"].endswith("bc: abcdefabcdef")


def test_unmapped_lora_is_refused_before_any_image(tiny_sdxl, tmp_path):
    bad = tmp_path / "sd15.safetensors"
    write_safetensors(
        bad,
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(1, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 1),
        },
    )
    with pytest.raises(ModelFileError, match="1 LoRA modules match no module"):
        _run(tiny_sdxl, tmp_path / "o", loras=[(bad, 1.0)])
    assert not list((tmp_path).glob("o/*.png"))


def test_cli_generate_with_lora_from_a_checkpoint_file(tiny_sdxl, lora, tmp_path, capsys):
    ckpt = save_single_file(tiny_sdxl, tmp_path / "tiny.safetensors", dtype="fp32")
    res = run_cli(
        capsys, "generate", ckpt, "smile", "--steps", "2", "--size", "64x64", "--seed", "5",
        "-n", "1", "--lora", f"{lora}:0.8", "--out", tmp_path / "o",
    )  # fmt: skip
    assert res.code == 0, res.err
    (png,) = (tmp_path / "o").glob("*.png")
    assert read_png_infotext(png).prompt.endswith("<lora:style:0.8>")
    res = run_cli(capsys, "generate", ckpt, "x", "--lora", tmp_path / "none.safetensors")
    assert res.code == 2 and "LoRA file not found" in res.error_lines[0]
