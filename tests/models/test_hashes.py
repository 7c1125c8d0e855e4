"""Model-site hashes, checked against hashlib / zlib / blake3 computed independently."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import zlib

import blake3
import pytest
import torch
from typer.testing import CliRunner

from tagtune.cli.main import app
from tagtune.models.hashes import file_hashes
from tagtune.models.safetensors_io import write_safetensors

MIB = 1024 * 1024


def reference(data: bytes, data_offset: int | None) -> dict:
    sha = hashlib.sha256(data).hexdigest()
    return {
        "sha256": sha,
        "autov1": hashlib.sha256(data[MIB : MIB + 65536]).hexdigest()[:8]
        if len(data) > 2 * MIB
        else None,
        "autov2": sha[:10].upper(),
        "autov3": hashlib.sha256(data[data_offset:]).hexdigest() if data_offset else None,
        "crc32": format(zlib.crc32(data), "08X"),
        "blake3": blake3.blake3(data).hexdigest(),
    }


def test_hello_world(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello world")
    h = file_hashes(path)
    assert h == reference(b"hello world", None)
    assert h["crc32"] == "0D4A1185"
    assert h["autov2"] == "B94D27B993"
    assert list(h) == ["sha256", "autov1", "autov2", "autov3", "crc32", "blake3"]


@pytest.mark.parametrize("chunk", [4096, 1000003, 8 * MIB])
def test_large_file_all_hashes_match_whatever_the_chunking(tmp_path, chunk):
    data = random.Random(5).randbytes(3 * MIB + 17)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert file_hashes(path, chunk_bytes=chunk) == reference(data, None)


@pytest.mark.parametrize("size, shown", [(2 * MIB, False), (2 * MIB + 1, True)])
def test_autov1_only_for_files_over_2_mib(tmp_path, size, shown):
    path = tmp_path / "f.bin"
    path.write_bytes(b"\x07" * size)
    assert (file_hashes(path)["autov1"] is not None) == shown


def test_autov3_is_sha256_after_the_safetensors_header(tmp_path):
    path = tmp_path / "m.safetensors"
    digest = write_safetensors(path, {"w": torch.arange(700_000, dtype=torch.float32)}, {"a": "b"})
    data = path.read_bytes()
    offset = 8 + struct.unpack("<Q", data[:8])[0]
    h = file_hashes(path, chunk_bytes=65536)
    assert h == reference(data, offset)
    assert h["autov3"] == digest


def test_progress_reports_bytes_read(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 10000)
    seen = []
    file_hashes(path, progress=seen.append, chunk_bytes=4096)
    assert seen == [4096, 8192, 10000]


def test_cli_hash_json_and_one_bad_file_does_not_stop_the_others(tmp_path):
    good = tmp_path / "hello.txt"
    good.write_bytes(b"hello world")
    missing = tmp_path / "missing.bin"
    result = CliRunner().invoke(app, ["hash", str(good), str(missing), "--json"])
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out[str(good)] == reference(b"hello world", None)
    assert out[str(missing)] == {"error": f"{missing}: cannot read: No such file or directory"}


def test_cli_hash_prints_each_value(tmp_path):
    good = tmp_path / "hello.txt"
    good.write_bytes(b"hello world")
    result = CliRunner().invoke(app, ["hash", str(good)])
    assert result.exit_code == 0
    assert "crc32   0D4A1185" in result.stdout
    assert "autov1  -" in result.stdout
