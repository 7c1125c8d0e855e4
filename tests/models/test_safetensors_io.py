"""Safetensors header validation (hostile files) and the streaming reader/writer."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from safetensors.torch import load_file

from tagtune.core.errors import ModelFileError
from tagtune.models.safetensors_io import (
    LazyTensor,
    iter_tensors,
    lazy_tensors,
    load_tensors,
    read_header,
    write_safetensors,
)


def raw(path, header, data=b"", length=None):
    """Write a safetensors-like file byte by byte (header may be a dict or raw bytes)."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(body) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + body + data)
    return path


def entry(dtype="F32", shape=(2,), begin=0, end=8):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


HOSTILE = [
    # (id, header, data, length override, expected message fragment)
    ("too-short", None, b"", None, "too short for a safetensors file (3 bytes)"),
    (
        "huge-length",
        {},
        b"",
        2**40,
        "header length 1099511627776 bytes is over the 104857600 byte limit",
    ),
    (
        "length-past-eof",
        {},
        b"",
        500,
        "header length 500 bytes runs past the end of the file (10 bytes): truncated or not a safetensors file",
    ),
    ("not-json", b"{not json", b"", None, "header is not valid JSON"),
    ("not-object", [1, 2], b"", None, "header is not a JSON object"),
    (
        "metadata-not-str",
        {"__metadata__": {"a": 1}},
        b"",
        None,
        "__metadata__.a: __metadata__ values must be strings",
    ),
    (
        "bad-dtype",
        {"w": entry(dtype="F31")},
        b"\0" * 8,
        None,
        "tensor 'w': unknown dtype 'F31' (allowed: F64, F32, F16, BF16",
    ),
    (
        "negative-shape",
        {"w": entry(shape=(-2,))},
        b"\0" * 8,
        None,
        "tensor 'w': shape [-2] is not a list of integers >= 0",
    ),
    (
        "bool-shape",
        {"w": entry(shape=(True,))},
        b"\0" * 8,
        None,
        "tensor 'w': shape [True] is not a list of integers >= 0",
    ),
    (
        "offsets-reversed",
        {"w": entry(begin=8, end=0)},
        b"\0" * 8,
        None,
        "tensor 'w': data_offsets [8, 0] are not two ordered integers >= 0",
    ),
    (
        "offsets-outside",
        {"w": entry(begin=8, end=16)},
        b"\0" * 8,
        None,
        "tensor 'w': data_offsets [8, 16] run past the end of the data section (8 bytes): truncated or corrupt file",
    ),
    (
        "size-mismatch",
        {"w": entry(shape=(3,))},
        b"\0" * 8,
        None,
        "tensor 'w': holds 8 bytes but shape [3] of F32 needs 12",
    ),
    (
        "overlap",
        {"a": entry(), "b": entry(begin=4, end=12)},
        b"\0" * 12,
        None,
        "tensor 'b': data_offsets [4, 12] overlap tensor 'a'",
    ),
    (
        "hole-before-first",
        {"a": entry(begin=4, end=12)},
        b"\0" * 12,
        None,
        "tensor 'a': data_offsets [4, 12] leave bytes 0 to 4 of the data section unused",
    ),
    (
        "hole-between",
        {"a": entry(), "b": entry(begin=12, end=20)},
        b"\0" * 20,
        None,
        "tensor 'b': data_offsets [12, 20] leave bytes 8 to 12 of the data section unused",
    ),
    ("trailing-bytes", {"a": entry()}, b"\0" * 11, None, "3 bytes after the last tensor"),
    (
        "extra-field",
        {"w": {**entry(), "x": 1}},
        b"\0" * 8,
        None,
        "tensor 'w': entry must have exactly dtype, shape and data_offsets",
    ),
    ("dtype-list", {"w": entry(dtype=["F32"])}, b"\0" * 8, None, "unknown dtype ['F32']"),
    ("dtype-object", {"w": entry(dtype={"F32": 4})}, b"\0" * 8, None, "unknown dtype {'F32': 4}"),
    (
        "deep",
        b'{"w": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        b"",
        None,
        "header is not valid JSON (nested 200001 levels deep (at most 8 are read))",
    ),
    (
        "lone-surrogate",
        {"__metadata__": {"a": "\ud800"}},
        b"",
        None,
        "header is not valid JSON (holds a lone UTF-16 surrogate",
    ),
    ("nan", b'{"__metadata__": {"a": NaN}}', b"", None, "NaN is not a JSON number"),
    ("many-dims", {"w": entry(shape=(1,) * 17, end=4)}, b"\0" * 4, None, "17 dimensions"),
    (
        "long-name",
        {"x" * 5000: entry(dtype=0)},
        b"\0" * 8,
        None,
        "tensor '" + "x" * 196 + "...: unknown dtype 0",  # a name cut to 200 characters
    ),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_headers_give_a_clear_error_naming_file_and_tensor(tmp_path, case):
    name, header, data, length, expected = case
    path = tmp_path / "bad.safetensors"
    if header is None:
        path.write_bytes(b"abc")
    else:
        raw(path, header, data, length)
    with pytest.raises(ModelFileError) as err:
        read_header(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_truncated_file_is_refused_before_reading(tmp_path):
    good = tmp_path / "good.safetensors"
    write_safetensors(good, {"a": torch.ones(4), "b": torch.zeros(8)})
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(
        ModelFileError, match=r"tensor 'b': data_offsets \[16, 48\] run past the end"
    ):
        read_header(cut)


def test_writer_output_loads_in_the_safetensors_library_identically(tmp_path):
    tensors = {
        "f32": torch.randn(3, 4),
        "bf16": torch.randn(5).to(torch.bfloat16),
        "i64": torch.arange(6).reshape(2, 3),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "flag": torch.tensor([True, False]),
    }
    path = tmp_path / "m.safetensors"
    write_safetensors(path, tensors, {"k": "v"})
    theirs = load_file(path)
    ours, meta = load_tensors(path)
    assert meta == {"k": "v"}
    for name, t in tensors.items():
        assert torch.equal(theirs[name], t) and theirs[name].dtype == t.dtype
        assert torch.equal(ours[name], t) and ours[name].dtype == t.dtype


def test_cast_converts_floats_only_and_hash_key_is_sha256_of_data_section(tmp_path):
    path = tmp_path / "m.safetensors"
    digest = write_safetensors(
        path,
        {"w": torch.randn(10), "ids": torch.arange(3)},
        {"modelspec.title": "x"},
        cast=torch.float16,
        hash_key="modelspec.hash_sha256",
    )
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    assert digest == hashlib.sha256(blob[8 + n :]).hexdigest()
    header = read_header(path)
    assert header.metadata["modelspec.hash_sha256"] == "0x" + digest
    assert header.tensors["w"].dtype == "F16" and header.tensors["ids"].dtype == "I64"
    assert (8 + n) % 8 == 0  # header padded to 8 bytes, as the format asks


def test_iter_and_lazy_read_one_tensor_at_a_time(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {f"t{i}": torch.full((i + 1,), float(i)) for i in range(4)}
    write_safetensors(path, tensors)
    assert [n for n, _ in iter_tensors(path, names=["t2", "t0"])] == ["t0", "t2"]
    lazy, meta = lazy_tensors(path)
    assert meta == {}
    assert lazy["t3"].shape == (4,) and lazy["t3"].dtype == torch.float32
    assert torch.equal(lazy["t3"].load(), tensors["t3"])


def test_write_is_atomic_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"a": torch.ones(2)})
    before = path.read_bytes()
    with pytest.raises(ModelFileError, match="dtype torch.complex64 cannot be stored"):
        write_safetensors(path, {"a": torch.ones(2), "c": torch.ones(2, dtype=torch.complex64)})

    def broken():
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):  # fails after the header is written
        write_safetensors(path, {"a": torch.ones(2), "b": LazyTensor(torch.float32, (2,), broken)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_lazy_tensor_that_loads_another_size_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    liar = LazyTensor(torch.float32, (2,), lambda: torch.ones(3))
    with pytest.raises(ModelFileError, match="^w: holds 12 bytes, 8 were declared$"):
        write_safetensors(path, {"w": liar})
    assert not path.exists()


def test_written_files_get_the_mode_of_a_plain_open(tmp_path):
    """0666 & ~umask like any new file (not the 0600 of the temporary file it started as)."""
    import os

    path = tmp_path / "m.safetensors"
    old = os.umask(0o022)
    try:
        write_safetensors(path, {"a": torch.ones(2)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_brackets_inside_names_and_metadata_do_not_count_as_nesting(tmp_path):
    name = "w[[[[[[[[[[{{{{{{{{{{"
    header = {"__metadata__": {"tagtune.x": "[" * 500 + "]" * 500}, name: entry()}
    path = raw(tmp_path / "ok.safetensors", header, b"\0" * 8)
    got = read_header(path)
    assert list(got.tensors) == [name] and got.metadata["tagtune.x"].startswith("[[[")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    import os

    path = tmp_path / "pipe.safetensors"
    os.mkfifo(path)
    with pytest.raises(ModelFileError, match="not a regular file"):
        read_header(path)
