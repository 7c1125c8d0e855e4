"""Crash-safe writes: nothing half-written is ever visible, and an error keeps the old file."""

from __future__ import annotations

import os

import pytest

from tagtune.core.atomic import atomic_dir, atomic_open, write_text_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("new, half written")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_files_and_folders_get_normal_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "state") as d:
            (d / "w.bin").write_bytes(b"1")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o755


def test_atomic_dir_is_marked_complete_only_on_success(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "s1") as d:
        (d / "w.bin").write_bytes(b"1")
        raise RuntimeError("killed")
    assert not (tmp_path / "s1").exists()
    with atomic_dir(tmp_path / "s2") as d:
        (d / "w.bin").write_bytes(b"1")
    assert (tmp_path / "s2" / "COMPLETE").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_writer_that_recreates_the_file_still_gets_normal_permissions(tmp_path):
    import torch
    from safetensors.torch import save_file

    from tagtune.core.atomic import atomic_path

    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "shard.safetensors") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(mask)
    assert (tmp_path / "shard.safetensors").stat().st_mode & 0o777 == 0o644
