"""Caption-file posts: kohya-style images and their caption files, written into the catalog.

Such a post has no Danbooru metadata. Its id is synthetic and negative: minus (1 + the first
60 bits of the image's MD5), so it is stable (the same image gets the same id wherever it
lies, and a re-ingest adds nothing) and never a Danbooru id (those are positive). Its md5 is
the image's own, so a favorites list may name it by md5. Its caption is the file's text
(`caption_text`): `caption_tags` in the user's order, the same tags in Danbooru form in
`tags_general`, judged by the safety filter like any post's tags, with the rating missing
(so the conditional list blocks too). Everything else (score, rating, date) is unknown.

A caption file that cannot be read, is empty, or is not UTF-8 text is a `bad-caption`
problem and its image is skipped; hidden characters are removed and reported (`bad-field`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb

from tagtune.core.catalog import transaction
from tagtune.core.untrusted import NOT_REGULAR, NotRegularFile, read_regular
from tagtune.ingest.caption_text import read_caption_text
from tagtune.ingest.kohya import CaptionImage, CaptionScan, read_dataset_toml, scan_folder
from tagtune.ingest.safety import blocked_lists, blocked_reason
from tagtune.ingest.sources import Problem
from tagtune.ingest.writes import FILE_COLUMNS, check_files, insert_rows, record_problems
from tagtune.recipe.model import Recipe

MAX_CAPTION_BYTES = 256 * 1024
"""A caption is a few hundred bytes; a larger caption file is refused (`bad-caption`)."""
CAPTION_POST_COLUMNS = [
    "id", "md5", "file_ext", "tags_artist", "tags_copyright", "tags_character", "tags_general",
    "tags_meta", "source", "raw", "excluded", "origin", "folder", "concept", "repeats",
    "caption_tags", "keep_tokens",
]  # fmt: skip


def synthetic_id(md5: str) -> int:
    """A caption-file post's id from its image's MD5: negative, stable (module notes)."""
    return -(1 + (int(md5[:15], 16)))


def read_caption_file(path: Any) -> tuple[str | None, str]:
    """(the caption text, "") or (None, why it cannot be used): never raises for a bad file."""
    try:
        data = read_regular(path, MAX_CAPTION_BYTES)
    except NotRegularFile:
        return None, NOT_REGULAR
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
    if not text.strip():
        return None, "empty caption file"
    return text, ""


def _image_md5(path: Any) -> tuple[str | None, str]:
    try:
        return hashlib.md5(read_regular(path), usedforsecurity=False).hexdigest(), ""
    except NotRegularFile:
        return None, NOT_REGULAR
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"


def caption_post_rows(
    images: Iterable[CaptionImage], key: str, recipe: Recipe, taken: set[int]
) -> tuple[list[tuple], list[tuple[int, str, str]], list[Problem]]:
    """(posts rows, image candidates (id, md5, path), problems) of caption-file images.

    `taken`: ids already in the catalog (their images are not read again). An image whose
    content an earlier image of this source has is a `duplicate`.
    """
    listed = set().union(*blocked_lists(recipe.safety))
    rows: list[tuple] = []
    cands: list[tuple[int, str, str]] = []
    problems: list[Problem] = []
    seen: dict[int, str] = {}
    for item in images:
        sub = item.subset
        text, why = read_caption_file(item.caption_file)
        if text is None:
            problems.append(Problem(str(item.caption_file), None, "bad-caption", why))
            continue
        md5, why = _image_md5(item.image)
        if md5 is None:
            problems.append(Problem(str(item.image), None, "unreadable", why))
            continue
        pid = synthetic_id(md5)
        if pid in seen:
            problems.append(
                Problem(str(item.image), pid, "duplicate", f"same image as {seen[pid]}")
            )
            continue
        seen[pid] = str(item.image)
        if pid in taken:
            continue
        read = read_caption_text(text, sub.separator, listed, sub.prefix, sub.suffix)
        if not read.caption:
            problems.append(
                Problem(str(item.caption_file), pid, "bad-caption", "no tags in the caption file")
            )
            continue
        if read.hidden:
            problems.append(Problem(str(item.caption_file), pid, "bad-field",
                                    f"caption held control or invisible characters "
                                    f"({read.hidden}); removed, the tags kept"))  # fmt: skip
        raw = json.dumps({"caption_file": str(item.caption_file), "image": str(item.image)})
        excluded = blocked_reason(read.danbooru, None, recipe.safety)
        rows.append(
            (pid, md5, item.image.suffix.lower().lstrip(".") or None, [], [], [], read.danbooru,
             [], key, raw, excluded, sub.origin, item.folder, sub.concept, sub.repeats,
             read.caption, sub.keep_tokens)
        )  # fmt: skip
        if excluded is None:
            cands.append((pid, md5, str(item.image)))
    return rows, cands, problems


def write_caption_posts(
    con: duckdb.DuckDBPyConnection,
    images: list[CaptionImage],
    key: str,
    recipe: Recipe,
    progress: Any = None,
) -> list[Problem]:
    """Insert the caption-file posts of `images` not yet in the catalog and their checked
    image files (inside the caller's transaction); returns the problems found."""
    taken = {int(r[0]) for r in con.execute("SELECT id FROM posts WHERE id < 0").fetchall()}
    rows, cands, problems = caption_post_rows(images, key, recipe, taken)
    insert_rows(con, "posts", CAPTION_POST_COLUMNS, rows)
    cands = [c for c in cands if c[0] not in _with_file(con, [c[0] for c in cands])]
    files, file_problems = check_files(con, cands, recipe, progress)
    insert_rows(con, "files", FILE_COLUMNS, files)
    return problems + file_problems


def _with_file(con: duckdb.DuckDBPyConnection, ids: list[int]) -> set[int]:
    if not ids:
        return set()
    return {
        int(r[0])
        for r in con.execute(
            "SELECT post_id FROM files WHERE list_contains(?, post_id)", [ids]
        ).fetchall()
    }


SETTING_PREFIX = "caption_files:"
"""`settings` key prefix (+ the SOURCE) of what a source's caption files did, for status."""


def scan_caption_files(source: Path, kind: str, mode: str) -> CaptionScan | None:
    """The caption-file images of a SOURCE (a folder, or an sd-scripts dataset TOML), or None
    for the other kinds. A bad TOML is an InputError naming the key."""
    if kind == "dataset-toml":
        return read_dataset_toml(source)
    if kind == "folder":
        return scan_folder(source, mode)
    return None


def finish_caption_files(
    con: duckdb.DuckDBPyConnection,
    scan: CaptionScan,
    key: str,
    kind: str,
    recipe: Recipe,
    problems: list[Problem],
    progress: Any = None,
) -> list[Problem]:
    """Write a source's caption-file posts in one transaction, record every problem of the
    source (`problems`: the Danbooru reader's) and what its caption files did; returns all."""
    mode = "toml" if kind == "dataset-toml" else recipe.ingest.caption_files
    with transaction(con):
        found = [*problems, *scan.problems, *write_caption_posts(con, scan.images, key, recipe,
                                                                  progress)]  # fmt: skip
        record_problems(con, key, found)
        note = {"kind": kind, "mode": mode, "caption_files": len(scan.images),
                "with_metadata_sidecar": scan.both}  # fmt: skip
        con.execute(
            "INSERT OR REPLACE INTO settings VALUES (?, ?)",
            [SETTING_PREFIX + key, json.dumps(note, sort_keys=True)],
        )
    return found
