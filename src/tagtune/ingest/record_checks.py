"""Checks of the records a source brought in, each finding a `Problem`: a record without a
usable id (dropped), a value that cannot be used (the post is kept, the value unknown).
"""

from __future__ import annotations

import re

import duckdb

from tagtune.ingest.sources import Problem


def bad_records(con: duckdb.DuckDBPyConnection, kind: str) -> list[Problem]:
    """Records without a usable id; a dump's are named by line or record number."""
    rows = con.execute(
        "SELECT path, line, n FROM (SELECT path, line, coalesce(rec, row_number() OVER ()) AS n, "
        "try_cast(json_extract_string(raw, '$.id') AS BIGINT) AS id FROM _raw) "
        "WHERE id IS NULL ORDER BY n LIMIT 10000"
    ).fetchall()
    out = []
    for path, line, rec in rows:
        where = "" if kind == "folder" else (f"line {line}: " if line else f"record {rec}: ")
        out.append(Problem(path, None, "bad-metadata", f"{where}missing or invalid id"))
    return out


# Numeric fields a post must hold as numbers; a value that is not one is kept as unknown
ODD_FIELDS = ("score", "fav_count", "image_width", "image_height")


def odd_fields(con: duckdb.DuckDBPyConnection, source: str) -> list[Problem]:
    """Values a record has but that cannot be used (`"score": "high"`, a created_at that is
    no date): the post is kept with the value unknown, and each is reported.

    Only posts whose typed column came out NULL are looked at again, so a clean dump costs
    a column scan per field.
    """
    parts = [
        f"SELECT id, '{c}' AS field, json_extract_string(raw, '$.{c}') AS value FROM posts "
        f"WHERE source = $source AND {c} IS NULL"
        for c in ODD_FIELDS
    ]
    parts.append(
        "SELECT id, 'created_at', created_at FROM posts "
        "WHERE source = $source AND date IS NULL AND created_at IS NOT NULL"
    )
    rows = con.execute(
        f"SELECT id, field, value FROM ({' UNION ALL '.join(parts)}) "
        "WHERE value IS NOT NULL AND value <> '' ORDER BY id, field LIMIT 10000",
        {"source": source},
    ).fetchall()
    out = []
    for pid, name, value in rows:
        what = "a date" if name == "created_at" else "an integer"
        out.append(
            Problem(
                source,
                pid,
                "bad-field",
                f"post {pid}: {name} = {value!r} is not {what}; kept as unknown",
            )
        )
    return out


def hidden_characters(found: dict[tuple[str | None, str], str], source: str) -> list[Problem]:
    """Records whose tag strings held control or invisible characters
    (`tag_normalize.sql_functions` collects them): removed, the post and its tags kept."""

    def post_id(rid: str | None) -> int | None:
        return int(rid) if rid is not None and re.fullmatch(r"-?[0-9]{1,18}", rid) else None

    out = []
    order = sorted(found.items(), key=lambda kv: (post_id(kv[0][0]) or 0, str(kv[0][0]), kv[0][1]))
    for (rid, name), chars in order:
        if rid is None:  # a record without an id is dropped and reported as such
            continue
        pid = post_id(rid)
        out.append(
            Problem(source, pid, "bad-field",
                    f"post {rid}: {name} held control or invisible characters ({chars}); "
                    "removed, tags kept")
        )  # fmt: skip
        if len(out) >= 10000:
            break
    return out
