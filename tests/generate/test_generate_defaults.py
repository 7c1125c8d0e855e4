"""`tagtune generate` defaults come from the model or the workspace; progress counts sampler steps."""

from __future__ import annotations

import json

from PIL import Image

from cli_main import run_cli
from tagtune.generate.infotext import read_png_infotext


def _tiny(tiny_sdxl, path):
    from tagtune.models.save import save_single_file

    return save_single_file(tiny_sdxl, path, dtype="fp32")


def test_a_tiny_model_is_sampled_at_its_own_size_into_outputs(
    tiny_sdxl, tmp_path, capsys, monkeypatch
):
    model = _tiny(tiny_sdxl, tmp_path / "tiny.safetensors")
    monkeypatch.chdir(tmp_path)
    res = run_cli(capsys, "generate", model, "smile", "-n", "1", "--steps", "1", "--json")
    assert res.code == 0, res.err
    (image,) = json.loads(res.out)["images"]
    assert image.startswith("outputs/") or image.startswith(str(tmp_path / "outputs"))
    assert Image.open(tmp_path / "outputs" / image.rsplit("/", 1)[-1]).size == (128, 128)


def test_with_a_workspace_the_recipe_gives_size_steps_negative_and_the_folder(
    tiny_sdxl, tmp_path, capsys
):
    model = _tiny(tiny_sdxl, tmp_path / "tiny.safetensors")
    ws = tmp_path / "ws"
    assert run_cli(capsys, "init", ws, "--base", model, "--profile", "cpu-tiny").code == 0
    text = (ws / "tagtune.toml").read_text()
    text = text.replace("sample_steps = 8", "sample_steps = 2")
    text = text.replace("sample_size = [128, 128]", "sample_size = [64, 96]")
    text = text.replace('sample_negative = "worst quality"', 'sample_negative = "blurry"')
    (ws / "tagtune.toml").write_text(text)

    res = run_cli(capsys, "generate", model, "smile", "-n", "1", "--workspace", ws, "--json")

    assert res.code == 0, res.err
    (image,) = json.loads(res.out)["images"]
    assert image.startswith(str(ws / "out" / "generated"))
    info = read_png_infotext(image)
    assert (info.width, info.height, info.steps, info.negative) == (64, 96, 2, "blurry")


def test_progress_counts_sampler_steps(tiny_sdxl, tmp_path):
    from tagtune.generate.pipeline import generate

    seen = []
    generate(tiny_sdxl, "smile", steps=3, n=2, size="64x64", out_dir=tmp_path,
             progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert seen[-1] == (6, 6) and (1, 6) in seen and (4, 6) in seen
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
