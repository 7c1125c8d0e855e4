"""Load / save of SDXL models: round trips, diffusers' own loader as the independent check,
weights-only pickles, and clear refusals."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from diffusers_reads import diffusers_reads
from tagtune.core.errors import DependencyError, ModelFileError
from tagtune.models.hashes import file_hashes
from tagtune.models.load import load_model, read_checkpoint
from tagtune.models.modelspec import modelspec_metadata
from tagtune.models.safetensors_io import read_header, write_safetensors
from tagtune.models.save import save_diffusers, save_single_file, single_file_state_dict


def assert_same_weights(a, b):
    for name, module in a.modules().items():
        sa, sb = module.state_dict(), b.modules()[name].state_dict()
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{name}.{k}"


@pytest.fixture(scope="module")
def exported(tiny_sdxl, tmp_path_factory):
    """The tiny model as a diffusers folder and as an fp32 single file made from that folder."""
    root = tmp_path_factory.mktemp("models")
    folder = save_diffusers(tiny_sdxl, root / "tiny-diffusers")
    single = save_single_file(load_model(folder), root / "tiny.safetensors", dtype="fp32")
    return folder, single


def test_round_trip_folder_single_file_folder_is_bit_identical(tiny_sdxl, exported, tmp_path):
    folder, single = exported
    from_folder = load_model(folder)
    assert_same_weights(tiny_sdxl, from_folder)
    from_single = load_model(single)
    assert_same_weights(tiny_sdxl, from_single)
    again = load_model(save_diffusers(from_single, tmp_path / "again"))
    assert_same_weights(tiny_sdxl, again)
    assert from_single.scheduler_config == tiny_sdxl.scheduler_config
    assert (
        from_single.tokenizer("1girl, smile").input_ids
        == tiny_sdxl.tokenizer("1girl, smile").input_ids
    )


def test_diffusers_own_single_file_loader_accepts_the_export(tiny_sdxl, exported):
    """Independent check: diffusers' from_single_file(config=local folder), offline, loads the
    export with nothing missing or left over and every tensor identical."""
    folder, single = exported
    pipe, bad = diffusers_reads(single, folder)
    assert bad == []
    for name, module in tiny_sdxl.modules().items():
        ours = {k.removeprefix("text_model."): v for k, v in module.state_dict().items()}
        theirs = {
            k.removeprefix("text_model."): v for k, v in getattr(pipe, name).state_dict().items()
        }
        assert ours.keys() == theirs.keys(), name
        assert not [k for k, v in theirs.items() if v.is_meta], name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_single_file_metadata_is_modelspec_with_autov3_hash(tiny_sdxl, tmp_path):
    meta = modelspec_metadata(
        "my model",
        author="me",
        license="Fair AI Public License 1.0-SD",
        date="2025-01-02",
        usage_hint="clip skip 1",
        extra={"tagtune.recipe": "{}"},
    )
    path = save_single_file(tiny_sdxl, tmp_path / "m.safetensors", metadata=meta)
    header = read_header(path)
    got = header.metadata
    assert got["modelspec.sai_model_spec"] == "1.0.0"
    assert got["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert got["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert got["modelspec.title"] == "my model"
    assert got["modelspec.date"] == "2025-01-02"
    assert got["modelspec.resolution"] == "1024x1024"
    assert got["modelspec.prediction_type"] == "epsilon"
    assert got["tagtune.recipe"] == "{}"
    assert got["modelspec.hash_sha256"] == "0x" + file_hashes(path)["autov3"]
    assert {t.dtype for t in header.tensors.values()} == {"F16"}
    assert json.loads(got["tagtune.configs"])["unet"]["block_out_channels"] == [16, 32, 48]


def test_single_file_default_metadata_has_title_and_date(tiny_sdxl, tmp_path):
    path = save_single_file(tiny_sdxl, tmp_path / "named.safetensors", dtype="bf16")
    header = read_header(path)
    assert header.metadata["modelspec.title"] == "named"
    assert header.metadata["modelspec.date"][:2] == "20"
    assert {t.dtype for t in header.tensors.values()} == {"BF16"}


def test_ckpt_with_weights_only_loads(tiny_sdxl, exported, tmp_path):
    state, _ = read_checkpoint(exported[1])
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": state, "global_step": 3}, ckpt)
    loaded, meta = read_checkpoint(ckpt)
    assert meta == {} and loaded.keys() == state.keys()


class Harmless:
    """A class that is not a tensor: weights_only unpickling must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_ckpt_with_code_in_the_pickle_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": Harmless()}, ckpt)
    with pytest.raises(ModelFileError) as err:
        read_checkpoint(ckpt)
    assert str(err.value).startswith(
        f"{ckpt}: refused: pickled code and objects are never loaded, only plain tensors"
    )
    assert "weights_only" not in str(err.value)  # never torch's advice to unpickle it anyway
    assert "this must never run" not in capsys.readouterr().out
    with zipfile.ZipFile(ckpt) as zf:  # it really is a pickle with a global in it
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
        assert b"\nprint\n" in data


@pytest.mark.parametrize(
    "name, content, expected",
    [
        (
            "model.gguf",
            b"x",
            "unsupported model file type '.gguf' (allowed: .safetensors, .ckpt, .pt, .pth, .bin, or a diffusers folder)",
        ),
        ("junk.ckpt", b"not a zip", "not a readable torch checkpoint (Unsupported operand 110)"),
    ],
)
def test_unsupported_or_broken_files_are_refused(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read_checkpoint(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ModelFileError, match=f"{tmp_path / 'nope.safetensors'}: no such file"):
        load_model(tmp_path / "nope.safetensors")


def test_not_sdxl_file_is_refused(tmp_path):
    path = tmp_path / "sd15.safetensors"
    write_safetensors(path, {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)})
    with pytest.raises(
        ModelFileError,
        match="not an SDXL 1.0 base checkpoint: conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias is missing",
    ):
        load_model(path)


def test_a_missing_tensor_is_named(tiny_sdxl, tmp_path):
    sd = single_file_state_dict(tiny_sdxl)
    del sd["model.diffusion_model.out.2.weight"]
    path = tmp_path / "holed.safetensors"
    good = save_single_file(tiny_sdxl, tmp_path / "good.safetensors", dtype="fp32")
    meta = read_header(good).metadata
    write_safetensors(path, sd, meta)
    with pytest.raises(
        ModelFileError, match=r"unet: 1 tensors missing, 0 unexpected \(first: conv_out.weight\)"
    ):
        load_model(path)


def test_without_tokenizers_or_vocabulary_the_error_says_what_is_missing(exported, monkeypatch):
    import tagtune.models.clip_vocab as cv

    monkeypatch.setattr(cv, "vocab_available", lambda: False)
    with pytest.raises(DependencyError) as err:
        load_model(exported[1])
    assert "no tokenizers: the model has no tokenizer/ and tokenizer_2/ folders" in str(err.value)
    assert "pass `tokenizers`" in err.value.hint


def test_tokenizers_from_a_folder(exported, tmp_path):
    folder, single = exported
    comps = load_model(single, tokenizers=folder)
    assert comps.tokenizer_2.pad_token == "!"
    with pytest.raises(DependencyError, match="has no tokenizer/ and tokenizer_2/ folders"):
        load_model(single, tokenizers=tmp_path)


def test_single_file_without_our_configs_is_read_as_full_size_sdxl(exported, tmp_path):
    """A file without `tagtune.configs` is taken as SDXL 1.0 base: a tiny one then misfits."""
    state, meta = read_checkpoint(exported[1])
    del meta["tagtune.configs"]
    path = tmp_path / "foreign.safetensors"
    write_safetensors(path, state, meta)
    with pytest.raises(ModelFileError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: ")
    assert "shape [16, 4, 3, 3] does not fit the config's [320, 4, 3, 3]" in str(err.value)
    assert err.value.hint == "only SDXL 1.0 base-architecture checkpoints load"


@pytest.mark.parametrize("given, written", [("abc", "0xabc"), ("0xabc", "0xabc"), (None, None)])
def test_modelspec_hash_is_prefixed_with_0x(given, written):
    meta = modelspec_metadata("t", date="", hash_sha256=given)
    assert meta.get("modelspec.hash_sha256") == written
    assert "modelspec.date" not in meta and "modelspec.author" not in meta
