"""extract-lora: full rank reproduces TUNED - BASE; at low rank the printed error is the real one."""

from __future__ import annotations

import functools
import json
import re

import pytest
import torch

from cli_main import run_cli
from tagtune.core.errors import InputError
from tagtune.merge.lora_extract import extract_lora, group_of, parse_rank_for
from tagtune.models.configs import sdxl_base_configs
from tagtune.models.lora_format import lora_delta, read_lora
from tagtune.models.lora_single_file import file_targets
from tagtune.models.safetensors_io import read_header, read_tensor
from tagtune.models.save import save_single_file


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: small SVDs on a shared 2-core machine are far slower with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(tuned, base) tiny fp32 single files: U-Net and text encoder 2 changed, encoder 1 not."""
    from tagtune.models.tiny import build_tiny_sdxl

    folder = tmp_path_factory.mktemp("extract")
    comps = build_tiny_sdxl(seed=3, tokenizers=(None, None))
    base = save_single_file(comps, folder / "base.safetensors", dtype="fp32")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in (comps.unet, comps.text_encoder_2):
            for p in module.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
    tuned = save_single_file(comps, folder / "tuned.safetensors", dtype="fp32")
    return tuned, base


@functools.cache
def _targets(tuned):
    from tagtune.models.load import file_configs

    return file_targets(file_configs(tuned), convs=True)


@functools.cache
def _header(path):
    return read_header(path)


def _diff(tuned, base, t) -> torch.Tensor:
    ht, hb = _header(tuned), _header(base)
    d = read_tensor(ht, t.key).float() - read_tensor(hb, t.key).float()
    return d if t.rows is None else d[t.rows[0] : t.rows[1]]


def test_full_rank_reproduces_the_difference(pair, tmp_path):
    tuned, base = pair
    result = extract_lora(
        tuned, base, tmp_path / "full.safetensors", rank=4096, conv_rank=4096, dtype="fp32"
    )
    modules, meta = read_lora(result.path)
    targets = _targets(tuned)
    assert set(modules) == {n for n in targets if not n.startswith("lora_te1_")}
    for name, m in modules.items():
        d = _diff(tuned, base, targets[name])
        assert torch.allclose(lora_delta(m, d.shape), d, atol=2e-6), name
    assert result.overall.relative_error < 1e-5
    # every U-Net and text encoder 2 tensor changed: those no LoRA module holds are reported
    assert "model.diffusion_model.time_embed.0.weight" in result.other_changed
    assert not any(k.startswith("first_stage_model.") for k in result.other_changed)
    assert not any(".transformer.text_model." in k for k in result.other_changed)  # TE1 same
    te1 = next(g for g in result.groups if g.group == "text encoder 1")
    assert te1.modules == 0 and te1.unchanged == 72
    record = json.loads(meta["tagtune.extract_lora"])
    assert record["tuned"]["file"] == "tuned.safetensors" and len(record["base"]["sha256"]) == 64
    assert (
        meta["ss_network_module"] == "networks.lora"
        and meta["ss_sd_model_name"] == "base.safetensors"
    )
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.hash_sha256"].startswith("0x")


def _recomputed(tuned, base, lora) -> dict[str, float]:
    """Relative Frobenius error per group and overall, from the files alone."""
    modules, _ = read_lora(lora)
    targets = _targets(tuned)
    norm2: dict[str, float] = {}
    resid2: dict[str, float] = {}
    for name, m in modules.items():
        d = _diff(tuned, base, targets[name])
        for key in (group_of(name), "all"):
            norm2[key] = norm2.get(key, 0.0) + float(d.pow(2).sum())
            resid2[key] = resid2.get(key, 0.0) + float((d - lora_delta(m, d.shape)).pow(2).sum())
    return {k: (resid2[k] / norm2[k]) ** 0.5 for k in norm2}


def test_low_rank_printed_error_is_what_the_files_give(pair, tmp_path, capsys):
    tuned, base = pair
    out = tmp_path / "low.safetensors"
    res = run_cli(
        capsys,
        "extract-lora",
        tuned,
        base,
        "--rank",
        "2",
        "--rank-for",
        "lora_te2_*=1",
        "--out",
        out,
    )
    assert res.code == 0, res.err
    want = _recomputed(tuned, base, out)
    assert 0.3 < want["all"] < 1.0  # a rank-2 cut of random noise loses most of it
    printed = {}
    for line in res.out.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        if len(cells) == 6 and re.fullmatch(r"[0-9.]+", cells[4]):
            printed[cells[0]] = (cells[3], float(cells[4]))
    assert set(printed) == {
        "U-Net input",
        "U-Net middle",
        "U-Net output",
        "text encoder 1",
        "text encoder 2",
        "all",
    }
    for group, err in want.items():
        assert printed[group][1] == pytest.approx(err, abs=2e-6), group
    assert printed["text encoder 2"][0] == "1" and printed["U-Net middle"][0] == "2"
    assert printed["all"][0] == "1-2"
    assert "other tensors differ and are not in the LoRA" in res.out
    modules, _ = read_lora(out)
    assert all(m.down.dtype == torch.float16 for m in modules.values())
    assert not any(n.startswith("lora_unet_") and "_0_in_layers_" in n for n in modules)  # no LoCon


def test_rank_zero_leaves_modules_out_and_conv_rank_adds_locon(pair, tmp_path):
    tuned, base = pair
    result = extract_lora(
        tuned,
        base,
        tmp_path / "x.safetensors",
        rank=1,
        conv_rank=2,
        rank_for=parse_rank_for(["lora_te2_*=0", "*attn2*=3"]),
        hash_parents=False,
    )
    modules, meta = read_lora(result.path)
    assert not any(n.startswith("lora_te2_") for n in modules)
    assert modules["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"].rank == 3
    assert modules["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k"].rank == 1
    conv = modules["lora_unet_input_blocks_1_0_in_layers_2"]
    assert conv.rank == 2 and conv.down.ndim == 4 and conv.up.shape[2:] == (1, 1)
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "2"}


def test_error_counts_the_rounding_of_the_stored_factors(pair, tmp_path):
    # at full rank in fp16 all the error left is fp16 rounding: reported, not hidden
    tuned, base = pair
    out = tmp_path / "fp16.safetensors"
    result = extract_lora(tuned, base, out, rank=4096, conv_rank=4096, hash_parents=False)
    want = _recomputed(tuned, base, out)["all"]
    assert 1e-5 < want < 1e-2
    assert result.overall.relative_error == pytest.approx(want, rel=1e-3)


def test_refusals(pair, tmp_path, capsys):
    tuned, base = pair
    res = run_cli(capsys, "extract-lora", tuned, base, "--out", base, "--force")
    assert res.code == 2 and "never replaced" in res.error_lines[0]
    res = run_cli(capsys, "extract-lora", tuned, tuned, "--out", tmp_path / "same.safetensors")
    assert res.code == 2 and "do not differ" in res.error_lines[0]
    with pytest.raises(InputError, match="matches no module"):
        extract_lora(tuned, base, tmp_path / "t.safetensors", rank_for=[("lora_unet_down_*", 4)])
    with pytest.raises(InputError, match="PATTERN=RANK"):
        parse_rank_for(["lora_te*"])
    res = run_cli(
        capsys, "extract-lora", tuned, base, "--rank", "-1", "--out", tmp_path / "r.safetensors"
    )
    assert res.code == 2 and "rank" in res.error_lines[0]
    assert not (tmp_path / "same.safetensors").exists()


def test_full_size_file_targets_are_streamable():
    # every target of a full-size SDXL lies in one tensor of the single file
    targets = file_targets(sdxl_base_configs(), convs=True)
    assert len({t.key for t in targets.values()}) == len(targets) - 2 * 32
