"""`tagtune convert` and `tagtune tiny-model` through the real CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tagtune.cli.main import app
from tagtune.models.load import load_model
from tagtune.models.safetensors_io import read_header

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.safetensors"
    invoke("tiny-model", path, "--seed", 3, "--dtype", "fp32")
    return path


def test_tiny_model_is_deterministic_for_a_seed(tiny_file, tmp_path):
    again = tmp_path / "again.safetensors"
    out = json.loads(invoke("tiny-model", again, "--seed", 3, "--dtype", "fp32", "--json").stdout)
    assert again.read_bytes() == tiny_file.read_bytes()
    assert out == {
        "path": str(again),
        "format": "single-file",
        "dtype": "fp32",
        "tensors": 2513,
        "bytes": again.stat().st_size,
    }
    other = tmp_path / "other.safetensors"
    invoke("tiny-model", other, "--seed", 4, "--dtype", "fp32")
    assert other.read_bytes() != tiny_file.read_bytes()


def test_tiny_model_metadata(tiny_file):
    meta = read_header(tiny_file).metadata
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert meta["modelspec.title"] == "tagtune tiny SDXL (seed 3)"
    assert "modelspec.date" not in meta  # same seed, same bytes


def test_tiny_model_diffusers_format_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    invoke("tiny-model", a, "--format", "diffusers", "--seed", 2)
    invoke("tiny-model", b, "--format", "diffusers", "--seed", 2)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    assert {str(p) for p in files_a} >= {
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "text_encoder_2/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer_2/vocab.json",
        "scheduler/scheduler_config.json",
    }
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in files_a)
    unet = read_header(a / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in unet.tensors.values()} == {"F16"}  # the default dtype


def test_convert_both_directions(tiny_file, tmp_path):
    folder = tmp_path / "diffusers"
    out = json.loads(invoke("convert", tiny_file, folder, "--dtype", "fp32", "--json").stdout)
    assert out["format"] == "diffusers" and out["dtype"] == "fp32"
    back = tmp_path / "back.safetensors"
    out = json.loads(
        invoke(
            "convert", folder, back, "--dtype", "fp32", "--json", "--author", "Ann",
            "--license", "CreativeML Open RAIL++-M",
        ).stdout
    )  # fmt: skip
    assert out["format"] == "single-file" and out["tensors"] == 2513
    a, b = load_model(tiny_file), load_model(back)
    for name, module in a.modules().items():
        sa, sb = module.state_dict(), b.modules()[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    meta = read_header(back).metadata
    assert meta["tagtune.converted_from"] == "diffusers"
    assert meta["modelspec.title"] == "back"
    assert meta["modelspec.author"] == "Ann"
    assert meta["modelspec.license"] == "CreativeML Open RAIL++-M"
    assert "modelspec.description" not in meta


def test_bad_option_gives_a_one_line_error_and_exit_code_2(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "tagtune.cli.main", "tiny-model", str(tmp_path / "x.safetensors")]
    proc = subprocess.run([*cmd, "--dtype", "fp8"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: dtype = 'fp8': unknown dtype (allowed: fp16, bf16, fp32)"


def test_unknown_format_is_refused(tmp_path):
    result = runner.invoke(app, ["tiny-model", str(tmp_path / "x"), "--format", "ckpt"])
    assert (
        str(result.exception) == "format = 'ckpt': unknown format (allowed: single-file, diffusers)"
    )


def test_existing_output_is_not_replaced_without_force(tiny_file):
    result = runner.invoke(app, ["tiny-model", str(tiny_file)])
    assert result.exit_code != 0
    assert isinstance(result.exception, Exception)
    assert str(result.exception) == f"{tiny_file}: output exists"


def test_single_file_output_needs_the_safetensors_extension(tmp_path):
    result = runner.invoke(app, ["tiny-model", str(tmp_path / "model.ckpt")])
    assert str(result.exception) == (
        f"{tmp_path / 'model.ckpt'}: a single-file checkpoint needs the .safetensors extension "
        "(UIs go by it)"
    )
