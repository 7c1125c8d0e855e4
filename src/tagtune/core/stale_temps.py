"""Temporary entries left by killed writers: how they are named, and removing them safely.

Every crash-safe write (`tagtune.core.atomic`) goes through a temporary file or folder beside its
target, `.{target name}.{8 random}.{pid}-{host}.tmp`. A write that is killed (SIGKILL, power
loss, out of memory) leaves it behind: for a merge that is a full-size checkpoint. Each writer
calls `clean_stale_temps(target)` (or `clean_stale_temps_in` for a family of targets) at its
start, which removes only temporaries of its own targets whose writer is gone:

- the owner is named in the temp's name (pid and a hash of the host name). On this host a
  temp is stale when that pid no longer runs (`kill(pid, 0)`): the kernel's own answer, right
  at once after a kill, whatever the size of the write or the speed of the disk. A pid that
  was reused by another process keeps the temp (never a live writer's file; it goes later).
- a temp of another host (a shared filesystem), or one without an owner (older tagtune, the
  ZeRO shard folders), cannot be asked: it is stale only when nothing in it changed for
  `UNKNOWN_OWNER_STALE_S` (a live write streams into its temp all the time).

Nothing that does not parse as a temp of the given targets is touched, nor a symlink, nor
anything but a plain file or folder. What was freed adds up in a process-wide tally that the
command line reports once ("removed N stale temporary files (X MB)").
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

UNKNOWN_OWNER_STALE_S = 3600.0
"""A temp whose owner cannot be asked is stale after this long without a change (seconds)."""
MAX_WALK = 100_000
"""Entries looked at when sizing or dating a temp folder (bounded work)."""

_TEMP = re.compile(
    r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?:\.(?P<pid>[0-9]{1,10})-(?P<host>[0-9a-f]{8}))?\.tmp$"
)


@dataclass(frozen=True)
class Freed:
    """Stale temporaries removed: how many entries and how many bytes they held."""

    files: int = 0
    bytes: int = 0

    def __add__(self, other: Freed) -> Freed:
        return Freed(self.files + other.files, self.bytes + other.bytes)

    def message(self) -> str:
        """`removed N stale temporary files (X MB)`, for the command line."""
        mb = self.bytes / 1e6
        size = f"{mb:.1f} MB" if mb >= 0.1 or self.bytes == 0 else "< 0.1 MB"
        noun = "file" if self.files == 1 else "files"
        return f"removed {self.files} stale temporary {noun} ({size})"


_lock = threading.Lock()
_total = Freed()


def freed_total() -> Freed:
    """Everything removed by `clean_stale_temps*` in this process since the last reset."""
    return _total


def reset_freed_total() -> None:
    """Start the process-wide tally again (the CLI does it before each command)."""
    global _total
    with _lock:
        _total = Freed()


def _host_id() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_suffix() -> str:
    """The end of a temp's name: `.{pid}-{host}.tmp`, naming the process that writes it."""
    return f".{os.getpid()}-{_host_id()}.tmp"


def temp_target(name: str) -> str | None:
    """The target name a temporary entry's name belongs to (None: not a tagtune temp)."""
    m = _TEMP.match(name)
    return m["name"] if m else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a real process id: cannot tell, keep it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process (or cannot ask): alive
    return True


def _newest_change(path: Path) -> float:
    """The latest mtime of `path` and (for a folder) of anything inside it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        seen = 0
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                seen += 1
                if seen > MAX_WALK:
                    return time.time()  # too big to date: treat as fresh, keep it
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    continue
    return newest


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether the writer of this temporary entry is gone (see the module docstring)."""
    m = _TEMP.match(path.name)
    if m is None:
        return False
    if m["pid"] is not None and m["host"] == _host_id():
        return not _pid_alive(int(m["pid"]))
    return older_than(path, UNKNOWN_OWNER_STALE_S, now)


def older_than(path: Path, seconds: float, now: float | None = None) -> bool:
    """Whether nothing in `path` changed for `seconds` (a temp whose owner cannot be asked)."""
    try:
        return (now if now is not None else time.time()) - _newest_change(path) > seconds
    except OSError:
        return False


def entry_size(path: Path) -> int:
    """Bytes held by a file, or by the files of a folder (bounded walk)."""
    try:
        if not path.is_dir():
            return path.lstat().st_size
        total, seen = 0, 0
        for root, _dirs, files in os.walk(path):
            for name in files:
                seen += 1
                if seen > MAX_WALK:
                    return total
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    continue
        return total
    except OSError:
        return 0


def remove_entry(path: Path) -> Freed:
    """Remove one plain file or folder (never a symlink or a device); what it freed."""
    try:
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            return Freed()
        size = entry_size(path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        return Freed()  # gone meanwhile, or not ours to remove: never an error for the writer
    return _count(Freed(1, size))


def _count(freed: Freed) -> Freed:
    global _total
    with _lock:
        _total = _total + freed
    return freed


def clean_stale_temps_in(folder: str | Path, owns: Callable[[str], bool]) -> Freed:
    """Remove the stale temporaries in `folder` of the targets whose name `owns` accepts.

    One directory scan, for writers of many targets in one folder (sidecars, latent shards,
    states). A missing folder frees nothing.
    """
    freed = Freed()
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.name.endswith(".tmp")]
    except OSError:
        return freed
    now = time.time()
    for name in names:
        target = temp_target(name)
        if target is None or not owns(target):
            continue
        path = Path(folder) / name
        if is_stale(path, now):
            freed = freed + remove_entry(path)
    return freed


def clean_stale_temps(target: str | Path) -> Freed:
    """Remove the stale temporaries a killed writer of `target` left beside it."""
    target = Path(target)
    return clean_stale_temps_in(target.parent, lambda name: name == target.name)
