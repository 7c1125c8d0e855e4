"""The favorites list: one post id or md5 per line, `#` comments, blank lines ignored.

Marking is separate from ingest so a user can re-mark favorites later without re-reading the
collection. Entries that match no post are reported (and recorded as `unknown-favorite`
problems, replaced on each marking from the same file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from tagtune.core.errors import InputError

_GALLERY_DL = re.compile(r"^danbooru_(\d+)_([0-9a-fA-F]{32})(\.\w+)?$")
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass(frozen=True)
class FavoriteEntry:
    """One usable line: its number, the text, and the id or md5 it names."""

    line: int
    text: str
    post_id: int | None = None
    md5: str | None = None


@dataclass(frozen=True)
class FavoritesResult:
    """What a marking did: entries read, posts marked now, favorites in total, unknown entries."""

    entries: int
    marked: int
    favorites: int
    unknown: list[FavoriteEntry]
    invalid: list[FavoriteEntry]


def parse_favorites(path: str | Path) -> tuple[list[FavoriteEntry], list[FavoriteEntry]]:
    """(entries, invalid lines) of a favorites file; gallery-dl file names are accepted too."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise InputError(f"cannot read favorites list: {exc.strerror}", file=path) from None
    entries: list[FavoriteEntry] = []
    invalid: list[FavoriteEntry] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        token = line.split("#", 1)[0].strip()
        if not token:
            continue
        if token.isdigit():
            entries.append(FavoriteEntry(lineno, token, post_id=int(token)))
        elif _MD5.match(token):
            entries.append(FavoriteEntry(lineno, token, md5=token.lower()))
        elif m := _GALLERY_DL.match(Path(token).name):
            entries.append(FavoriteEntry(lineno, token, post_id=int(m.group(1))))
        else:
            invalid.append(FavoriteEntry(lineno, token))
    return entries, invalid


def mark_favorites(
    con: duckdb.DuckDBPyConnection, path: str | Path, replace: bool = False
) -> FavoritesResult:
    """Mark the posts a favorites file names; with `replace`, unmark every other post first."""
    path = Path(path)
    entries, invalid = parse_favorites(path)
    ids = sorted({e.post_id for e in entries if e.post_id is not None})
    md5s = sorted({e.md5 for e in entries if e.md5 is not None})
    con.execute("CREATE OR REPLACE TEMP TABLE _fav_ids AS SELECT unnest(?::BIGINT[]) AS id", [ids])
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _fav_md5 AS SELECT unnest(?::VARCHAR[]) AS md5", [md5s]
    )
    if replace:
        con.execute("UPDATE posts SET favorite = FALSE WHERE favorite")
    matched = con.execute(
        "UPDATE posts SET favorite = TRUE WHERE (id IN (SELECT id FROM _fav_ids) "
        "OR md5 IN (SELECT md5 FROM _fav_md5)) AND NOT favorite"
    ).fetchone()
    marked = int(matched[0]) if matched else 0
    known_ids = {
        r[0] for r in con.execute("SELECT id FROM posts JOIN _fav_ids USING (id)").fetchall()
    }
    known_md5 = {
        r[0] for r in con.execute("SELECT md5 FROM posts JOIN _fav_md5 USING (md5)").fetchall()
    }
    unknown = [
        e
        for e in entries
        if (e.post_id is not None and e.post_id not in known_ids)
        or (e.md5 is not None and e.md5 not in known_md5)
    ]
    total = con.execute("SELECT count(*) FROM posts WHERE favorite").fetchone()[0]
    return FavoritesResult(len(entries), marked, int(total), unknown, invalid)
