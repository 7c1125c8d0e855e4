"""Merges: math per mode and per block, text-encoder alpha, VAE copy, architecture checks,
metadata naming the parents, streaming memory, and the CLI."""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from tagtune.cli.main import app
from tagtune.core.errors import InputError, ModelFileError
from tagtune.merge.blocks import BLOCK_NAMES, block_of, parse_blocks
from tagtune.merge.checkpoints import MergeSpec, merge_checkpoints

U = "model.diffusion_model."
TE1 = "conditioner.embedders.0.transformer.text_model."
TE2 = "conditioner.embedders.1.model."
VAE = "first_stage_model."

# key -> the block weight it takes (supermerger's SDXL mapping, docs/design.md)
KEY_BLOCKS = {
    U + "time_embed.0.weight": "IN00",
    U + "label_emb.0.0.weight": "IN00",
    **{U + f"input_blocks.{i}.0.weight": f"IN{i:02d}" for i in range(9)},
    U + "input_blocks.4.1.proj_in.weight": "IN04",
    U + "middle_block.1.proj_in.weight": "M00",
    **{U + f"output_blocks.{i}.0.in_layers.2.weight": f"OUT{i:02d}" for i in range(9)},
    U + "out.2.weight": "OUT08",
    U + "out.0.bias": "OUT08",
    TE1 + "encoder.layers.0.mlp.fc1.weight": "BASE",
    TE2 + "transformer.resblocks.9.attn.in_proj_weight": "BASE",
    TE2 + "text_projection": "BASE",
    VAE + "encoder.conv_in.weight": "BASE",
    VAE + "decoder.conv_out.bias": "BASE",
}
INT_KEY = TE1 + "embeddings.position_ids"


def tiny_file(path, seed, dtype=torch.float16, drop=(), reshape=None, metadata=None):
    """A small single-file checkpoint in the original SDXL key layout."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(3, 4, generator=g).to(dtype) for k in KEY_BLOCKS if k not in drop}
    sd[INT_KEY] = torch.arange(77, dtype=torch.int64).unsqueeze(0)
    if reshape:
        sd[reshape] = torch.zeros(4, 3, dtype=dtype)
    save_file(sd, str(path), metadata=metadata)
    return path


@pytest.fixture()
def parents(tmp_path):
    return (
        tiny_file(tmp_path / "a.safetensors", 1),
        tiny_file(tmp_path / "b.safetensors", 2),
        tiny_file(tmp_path / "c.safetensors", 3),
    )


def f32(path):
    return {k: v.float() for k, v in load_file(str(path)).items()}


@pytest.mark.parametrize(("key", "block"), KEY_BLOCKS.items())
def test_block_of_follows_supermerger_sdxl(key, block):
    assert block_of(key) == block


def test_weighted_sum_math(parents, tmp_path):
    a, b, _ = parents
    merge_checkpoints(a, b, tmp_path / "m.safetensors", MergeSpec(alpha=0.3))
    A, B, M = f32(a), f32(b), load_file(str(tmp_path / "m.safetensors"))
    for k in KEY_BLOCKS:
        assert M[k].dtype == torch.float16
        torch.testing.assert_close(M[k], ((1 - 0.3) * A[k] + 0.3 * B[k]).half())
    assert torch.equal(M[INT_KEY], load_file(str(a))[INT_KEY])


def test_add_difference_math(parents, tmp_path):
    a, b, c = parents
    spec = MergeSpec(mode="add-difference", alpha=0.5)
    merge_checkpoints(a, b, tmp_path / "m.safetensors", spec, c=c)
    A, B, C, M = f32(a), f32(b), f32(c), f32(tmp_path / "m.safetensors")
    for k in KEY_BLOCKS:
        torch.testing.assert_close(M[k], (A[k] + 0.5 * (B[k] - C[k])).half().float())


@pytest.mark.parametrize("block", BLOCK_NAMES)
def test_each_block_weight_hits_exactly_its_keys(parents, tmp_path, block):
    a, b, _ = parents
    weights = [0.0] * 20
    weights[BLOCK_NAMES.index(block)] = 1.0
    merge_checkpoints(a, b, tmp_path / "m.safetensors", MergeSpec(blocks=tuple(weights)))
    A, B, M = f32(a), f32(b), f32(tmp_path / "m.safetensors")
    took_b = {k for k in KEY_BLOCKS if torch.equal(M[k], B[k]) and not torch.equal(M[k], A[k])}
    assert took_b == {k for k, blk in KEY_BLOCKS.items() if blk == block}


def test_text_encoder_alpha_overrides_base_for_both_encoders(parents, tmp_path):
    a, b, _ = parents
    spec = MergeSpec(blocks=(0.5,) + (0.0,) * 19, text_encoder_alpha=1.0)
    merge_checkpoints(a, b, tmp_path / "m.safetensors", spec)
    A, B, M = f32(a), f32(b), f32(tmp_path / "m.safetensors")
    for k in KEY_BLOCKS:
        if k.startswith("conditioner."):
            assert torch.equal(M[k], B[k])
        elif k.startswith(VAE):
            torch.testing.assert_close(M[k], (0.5 * A[k] + 0.5 * B[k]).half().float())
        else:
            assert torch.equal(M[k], A[k])


@pytest.mark.parametrize("vae", ["a", "b"])
def test_vae_copies_one_parent(parents, tmp_path, vae):
    a, b, _ = parents
    merge_checkpoints(a, b, tmp_path / "m.safetensors", MergeSpec(alpha=0.5, vae=vae))
    src, M = f32({"a": a, "b": b}[vae]), f32(tmp_path / "m.safetensors")
    for k in KEY_BLOCKS:
        if k.startswith(VAE):
            assert torch.equal(M[k], src[k])


def test_dtype_option_and_mixed_input_dtypes(tmp_path):
    a = tiny_file(tmp_path / "a.safetensors", 1, dtype=torch.float32)
    b = tiny_file(tmp_path / "b.safetensors", 2, dtype=torch.bfloat16)
    merge_checkpoints(a, b, tmp_path / "m.safetensors", MergeSpec(alpha=0.25, dtype="bf16"))
    M = load_file(str(tmp_path / "m.safetensors"))
    A, B = f32(a), f32(b)
    k = U + "middle_block.1.proj_in.weight"
    assert M[k].dtype == torch.bfloat16
    torch.testing.assert_close(M[k], (0.75 * A[k] + 0.25 * B[k]).bfloat16())
    assert M[INT_KEY].dtype == torch.int64


def test_metadata_names_parents_and_recipe(parents, tmp_path):
    a, b, c = parents
    spec = MergeSpec(mode="add-difference", alpha=0.7, vae="b")
    res = merge_checkpoints(a, b, tmp_path / "m.safetensors", spec, c=c)
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert meta["modelspec.title"] == "m"
    recipe = json.loads(meta["tagtune.merge"])
    expected = [
        {
            "role": r,
            "file": p.name,
            "autov2": hashlib.sha256(p.read_bytes()).hexdigest()[:10].upper(),
        }
        for r, p in zip("abc", parents, strict=True)
    ]
    assert recipe["parents"] == expected
    assert (recipe["mode"], recipe["alpha"], recipe["vae"], recipe["text_encoder_alpha"]) == (
        "add-difference",
        0.7,
        "b",
        0.7,
    )
    assert [p["sha256"][:10].upper() for p in res.parents] == [p["autov2"] for p in expected]


def test_shape_mismatch_lists_the_keys(tmp_path):
    a = tiny_file(tmp_path / "a.safetensors", 1)
    k = U + "out.2.weight"
    b = tiny_file(tmp_path / "b.safetensors", 2, reshape=k)
    with pytest.raises(ModelFileError) as exc:
        merge_checkpoints(a, b, tmp_path / "m.safetensors", MergeSpec())
    assert str(exc.value) == (
        f"{b}: not the same architecture as a.safetensors: 1 tensors differ: "
        f"{k} is 3x4 in a.safetensors, 4x3 in b.safetensors"
    )
    assert not (tmp_path / "m.safetensors").exists()


def test_key_set_mismatch_lists_the_first_keys(tmp_path):
    drop = [U + f"input_blocks.{i}.0.weight" for i in range(7)]
    a = tiny_file(tmp_path / "a.safetensors", 1)
    b = tiny_file(tmp_path / "b.safetensors", 2, drop=drop)
    with pytest.raises(ModelFileError) as exc:
        merge_checkpoints(a, b, tmp_path / "m.safetensors", MergeSpec())
    listed = "; ".join(f"{k} only in a.safetensors (3x4)" for k in drop[:5])
    assert str(exc.value) == (
        f"{b}: not the same architecture as a.safetensors: 7 tensors differ: {listed}; and 2 more"
    )


@pytest.mark.parametrize(
    ("spec", "has_c", "message"),
    [
        (
            MergeSpec(mode="average"),
            False,
            "--mode = 'average': unknown merge mode (allowed: weighted-sum, add-difference)",
        ),
        (
            MergeSpec(mode="add-difference"),
            False,
            "--mode = 'add-difference': add-difference needs a third checkpoint C",
        ),
        (
            MergeSpec(),
            True,
            "--mode = 'weighted-sum': a third checkpoint C is only used by add-difference",
        ),
        (
            MergeSpec(alpha=0.1, blocks=(0.0,) * 20),
            False,
            "--alpha = 0.1: give --alpha or --blocks, not both",
        ),
        (
            MergeSpec(alpha=7.0),
            False,
            "--alpha = 7.0: weight must be a number from 0 to 1 (as A1111's merger multiplier) "
            "(allowed: 0 to 1)",
        ),
        (
            MergeSpec(text_encoder_alpha=float("nan")),
            False,
            "--text-encoder-alpha = nan: weight must be a number from 0 to 1 (as A1111's merger "
            "multiplier) (allowed: 0 to 1)",
        ),
        (
            MergeSpec(blocks=(0.5,) * 19 + (-0.5,)),
            False,
            "--blocks = '" + ",".join(["0.5"] * 19 + ["-0.5"]) + "': block weight -0.5 is "
            "outside 0 to 1 (allowed: numbers from 0 to 1)",
        ),
        (MergeSpec(vae="c"), False, "--vae = 'c': unknown VAE source (allowed: a, b)"),
        (
            MergeSpec(dtype="fp8"),
            False,
            "--dtype = 'fp8': unknown dtype (allowed: fp16, bf16, fp32)",
        ),
    ],
)
def test_bad_specs_are_clear_errors(spec, has_c, message):
    with pytest.raises(InputError) as exc:
        spec.validate(has_c)
    assert str(exc.value) == message


def test_parse_blocks_needs_20_numbers():
    assert parse_blocks(",".join(["0.5"] * 20)) == (0.5,) * 20
    with pytest.raises(InputError) as exc:
        parse_blocks("1,2")
    assert str(exc.value).startswith(
        "--blocks = '1,2': needs 20 block weights, got 2 (allowed: BASE, IN00"
    )


def test_pickle_checkpoint_is_refused(tmp_path):
    (tmp_path / "a.ckpt").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="pickled checkpoints are never loaded"):
        merge_checkpoints(
            tmp_path / "a.ckpt", tmp_path / "a.ckpt", tmp_path / "m.safetensors", MergeSpec()
        )


def test_streaming_memory_stays_near_one_tensor(tmp_path):
    n, side = 48, 512  # 48 tensors of 512 KiB (fp16): a 24 MiB file
    for name, seed in (("a", 1), ("b", 2)):
        g = torch.Generator().manual_seed(seed)
        sd = {
            U + f"input_blocks.{i % 9}.{i}.weight": torch.randn(side, side, generator=g).half()
            for i in range(n)
        }
        save_file(sd, str(tmp_path / f"{name}.safetensors"))
    tensor_bytes = side * side * 2
    tracemalloc.start()
    merge_checkpoints(
        tmp_path / "a.safetensors",
        tmp_path / "b.safetensors",
        tmp_path / "m.safetensors",
        MergeSpec(),
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # a few reused buffers per file (read, hash, write), never the whole model
    assert peak < 8 * tensor_bytes < n * tensor_bytes / 4


def test_cli_merge_json(parents, tmp_path):
    a, b, _ = parents
    out = tmp_path / "cli.safetensors"
    res = CliRunner().invoke(
        app, ["merge", str(a), str(b), "--alpha", "0.5", "--vae", "a", "--out", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["path"], data["tensors"], data["recipe"]["alpha"]) == (
        str(out),
        len(KEY_BLOCKS) + 1,
        0.5,
    )
    assert data["copied"] == 3  # two VAE tensors + position_ids
    assert out.exists()


def test_cli_bad_blocks_exit_2(parents, tmp_path):
    a, b, _ = parents
    res = CliRunner().invoke(app, ["merge", str(a), str(b), "--blocks", "1,2,3"])
    assert res.exit_code != 0
    assert isinstance(res.exception, InputError)


def test_without_parent_hashes_the_metadata_names_files_only(parents, tmp_path):
    a, b, _ = parents
    res = merge_checkpoints(a, b, tmp_path / "m.safetensors", MergeSpec(), hash_parents=False)
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        recipe = json.loads(f.metadata()["tagtune.merge"])
    assert recipe["parents"] == [
        {"role": "a", "file": "a.safetensors"},
        {"role": "b", "file": "b.safetensors"},
    ]
    assert res.parents == recipe["parents"]


def test_out_of_order_parent_is_still_hashed(tmp_path):
    """B written with its tensors in another order: its AutoV2 comes from a separate pass."""
    a = tiny_file(tmp_path / "a.safetensors", 1)
    sd = load_file(str(tiny_file(tmp_path / "tmp.safetensors", 2)))
    from tagtune.models.safetensors_io import encode_header

    entries = [
        (k, "F16" if v.dtype == torch.float16 else "I64", tuple(v.shape))
        for k, v in reversed(sd.items())
    ]
    header, _ = encode_header(entries, {})
    with open(tmp_path / "b.safetensors", "wb") as fh:
        fh.write(header)
        for k, _, _ in entries:
            fh.write(sd[k].contiguous().view(torch.uint8).numpy().tobytes())
    res = merge_checkpoints(a, tmp_path / "b.safetensors", tmp_path / "m.safetensors", MergeSpec())
    expected = hashlib.sha256((tmp_path / "b.safetensors").read_bytes()).hexdigest()
    assert res.parents[1]["sha256"] == expected
    assert torch.equal(load_file(str(tmp_path / "b.safetensors"))[INT_KEY], sd[INT_KEY])


def test_output_may_not_overwrite_an_input(parents):
    a, b, _ = parents
    before = a.read_bytes()
    with pytest.raises(InputError) as exc:
        merge_checkpoints(a, b, a, MergeSpec(), force=True)
    assert str(exc.value) == (
        f"{a}: would replace parent A; an input is never replaced, not even with --force"
    )
    assert a.read_bytes() == before


@pytest.mark.parametrize(
    "header",
    [
        {"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 8]}},  # size mismatch
        {"w": {"dtype": "F31", "shape": [2], "data_offsets": [0, 4]}},  # unknown dtype
        {
            "a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
            "b": {"dtype": "F16", "shape": [2], "data_offsets": [2, 6]},
        },  # overlap
    ],
    ids=["size-mismatch", "bad-dtype", "overlap"],
)
def test_hostile_parent_gets_the_loaders_error(parents, tmp_path, header):
    """The merge validates parents with the one header parser `load_model` uses."""
    from tagtune.models.safetensors_io import read_header

    body = json.dumps(header).encode()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * 8)
    with pytest.raises(ModelFileError) as expected:
        read_header(bad)
    with pytest.raises(ModelFileError) as got:
        merge_checkpoints(parents[0], bad, tmp_path / "m.safetensors", MergeSpec())
    assert str(got.value) == str(expected.value)
    assert str(got.value).startswith(f"{bad}: tensor ")
    assert not (tmp_path / "m.safetensors").exists()


def test_missing_parent_is_named(parents, tmp_path):
    with pytest.raises(ModelFileError) as exc:
        merge_checkpoints(parents[0], tmp_path / "nope.safetensors", tmp_path / "m", MergeSpec())
    assert str(exc.value) == f"{tmp_path / 'nope.safetensors'}: no such file"


@pytest.mark.parametrize("mode", ["weighted-sum", "add-difference"])
def test_tensors_cut_into_pieces_merge_and_hash_the_same(parents, tmp_path, monkeypatch, mode):
    """Tensors larger than a piece (here 5 elements) give the same file as whole tensors."""
    import tagtune.merge.io as mio

    a, b, c = parents
    spec = MergeSpec(mode=mode, alpha=0.4, vae="b", dtype="bf16")
    c = c if mode == "add-difference" else None
    whole = merge_checkpoints(a, b, tmp_path / "whole.safetensors", spec, c=c)
    monkeypatch.setattr(mio, "PIECE_ELEMENTS", 5)
    cut = merge_checkpoints(a, b, tmp_path / "cut.safetensors", spec, c=c)
    got, want = (
        load_file(str(tmp_path / "cut.safetensors")),
        load_file(str(tmp_path / "whole.safetensors")),
    )
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in got)
    assert cut.metadata["tagtune.merge"] == whole.metadata["tagtune.merge"]
    assert [p["sha256"] for p in cut.parents] == [p["sha256"] for p in whole.parents]
    expected = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, c) if p]
    assert [p["sha256"] for p in cut.parents] == expected


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_one_pass_lerp_gives_the_bits_of_fp32_math(dtype):
    """The fast path (lerp in the stored dtype) rounds exactly like fp32 math then a cast."""
    from tagtune.merge.checkpoints import _merge_into, _scratch

    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(300_000, generator=g).mul(4).to(dtype) for _ in range(2))
    for w in (0.3, 0.5, 0.77, -0.25, 1.5):
        out = torch.empty_like(a)
        _merge_into(MergeSpec(alpha=w), w, [a, b], out, _scratch())
        assert torch.equal(out, a.float().lerp(b.float(), w).to(dtype))


def test_a_read_error_mid_merge_stops_cleanly(parents, tmp_path, monkeypatch):
    """An error on the reader thread reaches the caller; no thread hangs, no output is left."""
    import tagtune.merge.io as mio

    calls = []
    real = mio._pread_into

    def failing(fd, view, offset, path):
        calls.append(path)
        if len(calls) == 7:
            raise ModelFileError("file ended inside a tensor (changed while merging?)", file=path)
        real(fd, view, offset, path)

    monkeypatch.setattr(mio, "_pread_into", failing)
    with pytest.raises(ModelFileError, match="changed while merging"):
        merge_checkpoints(parents[0], parents[1], tmp_path / "m.safetensors", MergeSpec())
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in parents]


def test_a_write_error_mid_merge_stops_cleanly(parents, tmp_path, monkeypatch):
    import tagtune.merge.io as mio

    def full(self, item):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mio.OutputWriter, "_write", full)
    with pytest.raises(OSError, match="No space left"):
        merge_checkpoints(parents[0], parents[1], tmp_path / "m.safetensors", MergeSpec())
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in parents]
