"""Crash-safe writes: write to a temporary name beside the target, fsync, rename.

A reader never sees a half-written file, and an interrupted write never destroys what
was there before.

A temporary entry is named `.{target name}.{8 random}.{pid}-{host}.tmp`: it names the
process that writes it, so a later writer of the same target can remove what a killed one
left (`clean_stale_temps`) without ever touching a live writer's temp (see `stale_temps`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tagtune.core.stale_temps import temp_suffix


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_mode(path: Path, directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp entry (0600/0700) the mode a plain open()/mkdir() would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename inside it survives a power loss."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it over `target`.

    Use for writers that want a path (safetensors, PIL, matplotlib).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=temp_suffix(), dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _normal_mode(tmp_path)
    try:
        yield tmp_path
        _normal_mode(tmp_path)  # writers that create their own file (safetensors) make it 0600
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(
    target: str | Path, mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces `target` atomically."""
    binary = "b" in mode
    with atomic_path(target) as tmp, open(tmp, mode, encoding=None if binary else encoding) as fh:
        yield fh
        fh.flush()


def write_text_atomic(target: str | Path, text: str) -> None:
    """Write a whole text file atomically."""
    with atomic_open(target, "w") as fh:
        fh.write(text)


@contextlib.contextmanager
def atomic_dir(target: str | Path, marker: str = "COMPLETE") -> Iterator[Path]:
    """Yield a temporary folder; on success fsync it, rename it to `target`, add `marker`.

    A folder without the marker is incomplete and must be ignored by readers.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=temp_suffix(), dir=target.parent))
    _normal_mode(tmp, directory=True)
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                with open(Path(root) / name, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        (target / marker).write_text("ok\n")
        with open(target / marker, "rb") as fh:
            os.fsync(fh.fileno())
        fsync_dir(target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
