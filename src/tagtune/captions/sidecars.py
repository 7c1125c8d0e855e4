"""Kohya-style caption sidecars (`NAME.txt`), written only where they replace nobody's file.

A `.txt` beside an image may be a caption the user made by hand. tagtune records every
sidecar it writes in the catalog table `sidecars` (real path, SHA-256 of the text, post id).
A file at a sidecar's path is tagtune's to replace only while it is recorded and still holds
the recorded text; any other file (a hand-made caption, a tagtune sidecar edited since) is
the user's. `sync_sidecars` then refuses the whole run with a list of those files before it
writes any sidecar, unless `overwrite` (explicit); `folder` (`--sidecars-dir`) writes the
sidecars into another folder instead of beside the images.

A sidecar of a post excluded since (the safety filter) is removed only when it is recorded
and unchanged; a changed one is left to the user and counted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tagtune.core.atomic import write_text_atomic
from tagtune.core.errors import InputError
from tagtune.core.stale_temps import clean_stale_temps_in
from tagtune.core.workspace import Workspace

TABLE = """
CREATE TABLE IF NOT EXISTS sidecars (
    path        VARCHAR PRIMARY KEY,
    sha256      VARCHAR NOT NULL,
    post_id     BIGINT NOT NULL,
    written_at  TIMESTAMP DEFAULT current_timestamp
)
"""
MAX_LISTED = 3
"""Paths named in a refusal (the count says how many there are)."""

Progress = Callable[[str, int, int], None]


@dataclass
class SidecarResult:
    """What `sync_sidecars` did.

    `sidecars`: included images whose sidecar holds their caption afterwards; `written`: files
    written this run; `removed`: sidecars of excluded posts removed; `kept`: sidecars of
    excluded posts left in place because they changed since tagtune wrote them.
    """

    sidecars: int = 0
    written: int = 0
    removed: int = 0
    kept: int = 0


def sidecar_path(image: str | Path, folder: str | Path | None = None) -> Path:
    """The caption sidecar of an image: `dir/image.png` -> `dir/image.txt` (or `folder/image.txt`)."""
    image = Path(image)
    name = image.with_suffix(".txt").name
    return Path(folder) / name if folder is not None else image.with_suffix(".txt")


def text_sha256(text: str) -> str:
    """SHA-256 of a caption as written (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _state(path: Path, recorded: str | None, new_sha: str) -> str:
    """`absent`, `same` (holds the new caption), `ours` (recorded, unchanged), `folder`
    (not a plain file: never replaced) or `user` (anything else)."""
    if not os.path.lexists(path):
        return "absent"
    if path.is_symlink() or not path.is_file():
        return "folder" if path.is_dir() and not path.is_symlink() else "user"
    try:
        sha = _file_sha256(path)
    except OSError:
        return "user"
    if sha == new_sha:
        return "same"
    return "ours" if recorded == sha else "user"


def _listed(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:MAX_LISTED])
    return shown + (f" (+{len(paths) - MAX_LISTED} more)" if len(paths) > MAX_LISTED else "")


def _targets(
    ws: Workspace, rows: list[tuple[int, str, str]], folder: Path | None
) -> list[tuple[int, Path, str, str]]:
    """(post id, sidecar path, record key, caption) of each row; the key is the real path
    (symlinked folders followed). Two images sharing one sidecar is an error."""
    out, seen, twice = [], set(), []
    real: dict[Path, str] = {}  # folder -> its real path (one lookup per folder)
    for post_id, image, caption in rows:
        target = sidecar_path(ws.resolve(image), folder)
        parent = target.parent
        if parent not in real:
            if folder is None and not parent.is_dir():
                raise InputError("image folder is missing", file=parent, field="files.path")
            real[parent] = os.path.realpath(parent)
        key = os.path.join(real[parent], target.name)
        if key in seen:
            twice.append(target)
        seen.add(key)
        out.append((post_id, target, key, caption))
    if twice:
        raise InputError(
            f"{len(twice)} sidecar(s) would hold the captions of two images with the same "
            f"name: {_listed(twice)}; no sidecar was written",
            field="sidecars",
            hint="images that share a name share a NAME.txt in kohya's convention",
        )
    return out


def _remove_excluded(con) -> tuple[int, int]:
    """Remove recorded, unchanged sidecars of posts excluded (or gone) since; (removed, kept)."""
    rows = con.execute(
        "SELECT s.path, s.sha256 FROM sidecars s LEFT JOIN posts p ON p.id = s.post_id "
        "WHERE p.id IS NULL OR p.excluded IS NOT NULL ORDER BY s.path"
    ).fetchall()
    removed = kept = 0
    for path, sha in rows:
        p = Path(path)
        if os.path.lexists(p):
            if p.is_file() and not p.is_symlink() and _file_sha256(p) == sha:
                p.unlink()
                removed += 1
            else:
                kept += 1  # changed since: the user's now, and no longer tagtune's record
    if rows:
        con.execute(
            "DELETE FROM sidecars WHERE list_contains(?::VARCHAR[], path)", [[r[0] for r in rows]]
        )
    return removed, kept


def _record(con, rows: list[tuple[str, str, int]]) -> None:
    """Record (path, sha256, post id) rows, replacing earlier records of the same paths."""
    import pyarrow as pa

    if not rows:
        return
    paths, shas, ids = zip(*rows, strict=True)
    table = pa.table({"path": list(paths), "sha256": list(shas), "post_id": list(ids)})
    con.register("_new_sidecars", table)
    try:
        con.execute(
            "INSERT OR REPLACE INTO sidecars (path, sha256, post_id) "
            "SELECT path, sha256, post_id FROM _new_sidecars"
        )
    finally:
        con.unregister("_new_sidecars")


def sync_sidecars(
    con,
    ws: Workspace,
    rows: list[tuple[int, str, str]],
    *,
    folder: str | Path | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SidecarResult:
    """Write each (post id, image path, caption) row's sidecar; remove those of excluded posts.

    `con` is the open (writable) catalog. Before anything is written, every existing file at
    a sidecar path is checked: one that tagtune did not write, or that changed since, makes
    the run an InputError listing them (count and first paths) unless `overwrite`; a folder
    there is refused even then. Unchanged files are not rewritten.
    """
    progress = progress or (lambda _s, _d, _t: None)
    con.execute(TABLE)
    folder = Path(folder) if folder is not None else None
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise InputError("is not a folder", file=folder, field="--sidecars-dir")
        folder.mkdir(parents=True, exist_ok=True)
    targets = _targets(ws, rows, folder)
    recorded = dict(con.execute("SELECT path, sha256 FROM sidecars").fetchall())
    plan, conflicts, folders = [], [], []
    for i, (post_id, target, key, caption) in enumerate(targets):
        sha = text_sha256(caption)
        state = _state(target, recorded.get(key), sha)
        if state == "folder":
            folders.append(target)
        elif state == "user":
            conflicts.append(target)
        plan.append((post_id, target, key, caption, sha, state))
        if i % 1000 == 0:
            progress("checking sidecars", i, len(targets))
    if folders:
        raise InputError(
            f"{len(folders)} sidecar path(s) are folders: {_listed(folders)}; no sidecar "
            "was written",
            field="sidecars",
            hint="move them, or write the sidecars elsewhere with --sidecars-dir DIR",
        )
    if conflicts and not overwrite:
        raise InputError(
            f"{len(conflicts)} existing sidecar file(s) were not written by tagtune or were "
            f"changed since: {_listed(conflicts)}; no sidecar was written",
            field="sidecars",
            hint="write them elsewhere with --sidecars-dir DIR, or replace them with --overwrite",
        )
    result = SidecarResult(sidecars=len(plan))
    result.removed, result.kept = _remove_excluded(con)
    todo = [p for p in plan if p[5] != "same" or recorded.get(p[2]) == p[4]]
    _record(con, [(key, sha, post_id) for post_id, _t, key, _c, sha, _s in todo])
    by_folder: dict[Path, set[str]] = {}
    for _pid, target, _k, _c, _sha, _s in plan:
        by_folder.setdefault(target.parent, set()).add(target.name)
    for parent, names in by_folder.items():
        clean_stale_temps_in(parent, names.__contains__)
    for i, (_pid, target, _k, caption, _sha, state) in enumerate(plan):
        if state != "same":
            write_text_atomic(target, caption)
            result.written += 1
        if i % 1000 == 0:
            progress("writing sidecars", i, len(plan))
    progress("writing sidecars", len(plan), len(plan))
    return result
