"""Checks of the records a source brought in, each finding a `Problem`: a record without a
usable id (dropped), a value that cannot be used (the post is kept, the value unknown).
"""

from __future__ import annotations

import dataclasses
import re

import duckdb

from tagtune.ingest.sources import ID_RULE, Problem, post_id_sql


def raw_ids_sql(raw: str = "_raw") -> str:
    """SELECT of `raw`'s columns plus `id` (post_id_sql) and `id_json` (the id as written)."""
    return (
        f"SELECT *, {post_id_sql('id_text')} AS id FROM (SELECT *, "
        f"json_extract_string(raw, '$.id') AS id_text, json_extract(raw, '$.id') AS id_json "
        f"FROM {raw})"
    )


def _where(kind: str, line: int | None, rec: int) -> str:
    return "" if kind == "folder" else (f"line {line}: " if line else f"record {rec}: ")


def bad_records(con: duckdb.DuckDBPyConnection, kind: str) -> list[Problem]:
    """Records without a usable id, named by the id as written; a dump's by line or record."""
    rows = con.execute(
        "SELECT path, line, n, id_json FROM (SELECT path, line, id, id_json, "
        f"coalesce(rec, row_number() OVER ()) AS n FROM ({raw_ids_sql()})) "
        "WHERE id IS NULL ORDER BY n LIMIT 10000"
    ).fetchall()
    out = []
    for path, line, rec, written in rows:
        what = "no id" if written is None else f"id = {_short(written)} is not {ID_RULE}"
        out.append(Problem(path, None, "bad-metadata", f"{_where(kind, line, rec)}{what}; dropped"))
    return out


def duplicate_ids(con: duckdb.DuckDBPyConnection, kind: str) -> list[Problem]:
    """Records whose id an earlier record of the same source already has (after
    `keep_first_ids`): each is a `duplicate-id` problem; the first record is kept."""
    rows = con.execute(
        "SELECT path, line, rec, id, first, first_path FROM (SELECT path, line, rec, id, "
        "min(rec) OVER w AS first, first_value(path) OVER (w ORDER BY rec) AS first_path "
        "FROM _raw_ids WHERE id IS NOT NULL WINDOW w AS (PARTITION BY id)) "
        "WHERE rec > first ORDER BY rec LIMIT 10000"
    ).fetchall()
    out = []
    for path, line, rec, pid, first, first_path in rows:
        earlier = first_path if kind == "folder" else f"record {first}"
        out.append(
            Problem(
                path,
                pid,
                "duplicate-id",
                f"{_where(kind, line, rec)}post {pid} again (first in {earlier}, kept); dropped",
            )
        )
    return out


def keep_first_ids(con: duckdb.DuckDBPyConnection) -> None:
    """Number `_raw`'s records in reading order and keep, of each id, only the first: so
    which record wins is fixed, and the others can be named (`duplicate_ids`). Costs a
    pass over the source; only run when the source repeats an id."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _raw_ids AS SELECT * FROM "
        f"({raw_ids_sql('(SELECT coalesce(rec, row_number() OVER ()) AS rec, path, line, raw, file FROM _raw)')})"
    )
    con.execute(
        "CREATE OR REPLACE TEMP VIEW _raw_first AS SELECT rec, path, line, raw, file FROM _raw_ids "
        "QUALIFY id IS NULL OR row_number() OVER (PARTITION BY id ORDER BY rec) = 1"
    )


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def name_record_files(
    con: duckdb.DuckDBPyConnection, raw: str, problems: list[Problem]
) -> list[Problem]:
    """`bad-field` problems name the file their post's record came from (a folder's
    sidecar, a dump file) instead of the source they were found in: the file to open."""
    ids = sorted({p.post_id for p in problems if p.reason == "bad-field" and p.post_id})
    if not ids:
        return problems
    files = dict(
        con.execute(
            f"SELECT id, min(path) FROM ({raw_ids_sql(raw)}) WHERE id IN (SELECT unnest($ids)) "
            "AND path IS NOT NULL GROUP BY id",
            {"ids": ids},
        ).fetchall()
    )
    return [
        dataclasses.replace(p, path=files[p.post_id])
        if p.reason == "bad-field" and p.post_id in files
        else p
        for p in problems
    ]
