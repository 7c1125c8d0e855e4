"""Readers: every SOURCE kind becomes the relation `_raw(rec, path, line, raw, file)`.

- folder: gallery-dl sidecars (`NAME.EXT.json` or `NAME.json`) beside images, read in Python
  (collections hold thousands of files, not millions) into a temporary table;
- api-json (a list of posts, or one post), jsonl and parquet dumps: a DuckDB view over the
  file, parsed by DuckDB. A line DuckDB rejects is skipped there and found again by a short
  Python pass that names its line number.

Dumps are read by Danbooru API field names (`tag_string_general` ..., or gallery-dl's
`tags_general` ... lists); community dumps that store tags as category-coded tables must be
converted first, since their category numbering differs between dumps.

A reader returns the problems it found (bad sidecars, bad lines, images without metadata).
A reader that already made a pass over the ids leaves their counts in `_raw_stats`, so the
insert need not parse a million records once more.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from tagtune.core.errors import InputError
from tagtune.core.untrusted import (
    NOT_REGULAR,
    BadJSON,
    NotRegularFile,
    TooDeep,
    parse_json,
    read_regular,
)
from tagtune.ingest.images import MEDIA_EXTS

KINDS = ("folder", "api-json", "jsonl", "parquet")
MAX_SIDECAR_BYTES = 16 * 1024 * 1024
"""A gallery-dl sidecar is a few KiB; a larger .json beside an image is not read."""


@dataclass(frozen=True)
class Problem:
    """One skipped file or record: where, which post if known, a reason word and a detail."""

    path: str
    post_id: int | None
    reason: str
    detail: str


ID_DIGITS = "0*[1-9][0-9]{0,18}"
"""A post id as written: decimal digits of a positive integer (BIGINT range checked by cast)."""
ID_RULE = "a positive integer written in decimal digits"


def post_id_sql(text: str) -> str:
    """SQL for the post id from its extracted text (`json_extract_string(raw, '$.id')`).

    Only an integer as written is an id: a JSON integer, or a string of decimal digits as
    some dumps write it. 28.5, 1e3, "0x1F", true and -3 are NULL (the record is reported and
    dropped), never coerced into another post's id (28.5 would round to post 29). `text`
    is used twice: pass a column, not a function of the JSON.
    """
    return (
        f"(CASE WHEN regexp_full_match({text}, '{ID_DIGITS}') THEN try_cast({text} AS BIGINT) END)"
    )


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _base_suffix(path: Path) -> str:
    name = path.name.lower()
    for comp in (".gz", ".zst"):
        if name.endswith(comp):
            name = name[: -len(comp)]
    return Path(name).suffix


def detect_kind(path: str | Path) -> str:
    """The kind of a SOURCE from what it is: folder, or a file by its extension."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if path.exists() and not path.is_file():
        raise InputError(NOT_REGULAR, file=path, field="SOURCE")
    if not path.is_file():
        raise InputError("no such file or folder", file=path, field="SOURCE")
    suffix = _base_suffix(path)
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "api-json"
    if suffix == ".parquet":
        return "parquet"
    raise InputError(
        "unknown source kind",
        file=path,
        field="SOURCE",
        allowed="a folder, .json (API list), .jsonl/.ndjson (dump), .parquet (dump)",
    )


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


# --- folders of images with gallery-dl sidecars ---------------------------------------------


def _walk(folder: Path) -> tuple[list[Path], dict[str, Path]]:
    media: list[Path] = []
    sidecars: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            low = name.lower()
            if low.endswith(".json"):
                sidecars[str(p)] = p
            elif low.rsplit(".", 1)[-1] in MEDIA_EXTS and "." in low:
                media.append(p)
    return media, sidecars


def _pair(media: list[Path], sidecars: dict[str, Path]) -> list[tuple[Path | None, Path | None]]:
    """(sidecar, image) pairs: `NAME.EXT.json` first, then `NAME.json`; leftovers pair with None."""
    pairs: list[tuple[Path | None, Path | None]] = []
    used: set[str] = set()
    for img in media:
        side = None
        for cand in (img.with_name(img.name + ".json"), img.with_suffix(".json")):
            if str(cand) in sidecars and str(cand) not in used:
                side = cand
                break
        if side is not None:
            used.add(str(side))
        pairs.append((side, img))
    pairs.extend((p, None) for key, p in sidecars.items() if key not in used)
    return pairs


def read_folder(con: duckdb.DuckDBPyConnection, folder: Path) -> list[Problem]:
    """Create temp table `_raw` from a folder's sidecars and their images; return problems."""
    import pyarrow as pa

    media, sidecars = _walk(folder)
    problems: list[Problem] = []
    rows: dict[str, list] = {"rec": [], "path": [], "line": [], "raw": [], "file": []}
    for side, img in _pair(media, sidecars):
        if side is None:
            problems.append(
                Problem(str(img), None, "no-metadata", "no NAME.EXT.json or NAME.json sidecar")
            )
            continue
        try:
            data = read_regular(side, MAX_SIDECAR_BYTES)
            obj = parse_json(data)
        except (BadJSON, NotRegularFile) as exc:
            problems.append(Problem(str(side), None, "bad-metadata", str(exc)))
            continue
        except OSError as exc:
            problems.append(
                Problem(str(side), None, "bad-metadata", f"cannot read: {exc.strerror or exc}")
            )
            continue
        text = data.decode("utf-8")
        if not isinstance(obj, dict):
            problems.append(
                Problem(str(side), None, "bad-metadata", "not a post (a JSON object expected)")
            )
            continue
        if img is None:
            pid = obj.get("id")
            problems.append(
                Problem(
                    str(side),
                    pid if type(pid) is int and 0 < pid < 2**63 else None,
                    "no-image",
                    "sidecar without an image beside it",
                )
            )
        rows["rec"].append(len(rows["rec"]) + 1)
        rows["path"].append(str(side))
        rows["line"].append(None)
        rows["raw"].append(text)
        rows["file"].append(str(img) if img else None)
    table = pa.table(
        {
            "rec": pa.array(rows["rec"], pa.int64()),
            "path": pa.array(rows["path"], pa.string()),
            "line": pa.array(rows["line"], pa.int64()),
            "raw": pa.array(rows["raw"], pa.string()),
            "file": pa.array(rows["file"], pa.string()),
        }
    )
    con.register("_raw_py", table)
    # TRY_CAST: a sidecar Python accepted but DuckDB does not is one problem, not a failed source
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _raw AS "
        "SELECT rec, path, line, TRY_CAST(raw AS JSON) AS raw, file FROM _raw_py"
    )
    con.unregister("_raw_py")
    refused = con.execute("SELECT path FROM _raw WHERE raw IS NULL ORDER BY rec").fetchall()
    if refused:
        problems += [
            Problem(p, None, "bad-metadata", "not JSON that DuckDB reads") for (p,) in refused
        ]
        con.execute("DELETE FROM _raw WHERE raw IS NULL")
    return problems


# --- dumps read by DuckDB ---------------------------------------------------------------------


def _bad_lines(path: Path, limit: int = 1000) -> list[Problem]:
    """Python pass over a JSONL file: the lines that are not JSON objects, with line numbers."""
    out: list[Problem] = []
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                parse_json(line)
            except TooDeep:  # DuckDB reads deep records: only what it rejects is named here
                continue
            except BadJSON as exc:
                out.append(Problem(str(path), None, "bad-metadata", f"line {lineno}: {exc.reason}"))
                if len(out) >= limit:
                    break
    return out


def _first_char(path: Path) -> str:
    with _open_text(path) as fh:
        while True:
            chunk = fh.read(4096)
            if not chunk:
                return ""
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]


def open_jsonl_strict(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """View `_raw` over a JSONL dump that fails on the first malformed line.

    The fast path for clean dumps: no separate validation pass. On any error the caller
    falls back to read_dump, which skips and names the bad lines.
    """
    p = _sql_str(str(path))
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW _raw AS SELECT NULL::BIGINT AS rec, {p} AS path, "
        "NULL::BIGINT AS line, json AS raw, NULL::VARCHAR AS file "
        f"FROM read_json_objects({p}, format='newline_delimited')"
    )


def read_dump(con: duckdb.DuckDBPyConnection, path: Path, kind: str) -> list[Problem]:
    """Create view `_raw` over a JSON / JSONL / Parquet dump; return the records it rejects."""
    p = _sql_str(str(path))
    # rec stays NULL here: numbering a million rows costs a full materialisation; the rare
    # query that names a bad record numbers the narrow id column itself.
    cols = f"NULL::BIGINT AS rec, {p} AS path, NULL::BIGINT AS line"
    if kind == "parquet":
        try:
            con.execute(f"SELECT * FROM read_parquet({p}) LIMIT 0")
        except duckdb.Error as exc:
            return [Problem(str(path), None, "bad-metadata", f"not a Parquet file: {exc}"[:300])]
        src = f"SELECT {cols}, to_json(t) AS raw, NULL::VARCHAR AS file FROM read_parquet({p}) t"
        con.execute(f"CREATE OR REPLACE TEMP VIEW _raw AS {src}")
        return []
    if kind == "api-json":
        first = _first_char(path)
        if first == "[":
            return _read_json_array(con, path, cols)
        fmt = "auto"
    else:
        fmt = "newline_delimited"
    reader = f"read_json_objects({p}, format='{fmt}', ignore_errors=true)"
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW _raw_all AS SELECT {cols}, json AS raw, "
        f"NULL::VARCHAR AS file FROM {reader}"
    )
    try:
        # one narrow pass: rejected lines, and the id counts the insert needs (see id_stats)
        n_bad, *stats = con.execute(
            "SELECT count(*) FILTER (WHERE raw IS NULL), count(raw), count(id), count(DISTINCT id) "
            f"FROM (SELECT raw, {post_id_sql('t')} AS id FROM (SELECT raw, "
            "json_extract_string(raw, '$.id') AS t FROM _raw_all))"
        ).fetchone()
    except duckdb.Error as exc:
        return [Problem(str(path), None, "bad-metadata", f"not JSON: {exc}".splitlines()[0])]
    con.execute("CREATE OR REPLACE TEMP VIEW _raw AS SELECT * FROM _raw_all WHERE raw IS NOT NULL")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _raw_stats AS SELECT ?::BIGINT AS n, ?::BIGINT AS n_ids, "
        "?::BIGINT AS n_distinct",
        stats,
    )
    if not n_bad:
        return []
    found = _bad_lines(path) if kind == "jsonl" else []
    return found or [
        Problem(str(path), None, "bad-metadata", f"{n_bad} record(s) are not valid JSON")
    ]


def _read_json_array(con: duckdb.DuckDBPyConnection, path: Path, cols: str) -> list[Problem]:
    """A Danbooru API list of posts; a malformed file is one problem naming the line."""
    p = _sql_str(str(path))
    src = (
        f"SELECT {cols}, json AS raw, NULL::VARCHAR AS file "
        f"FROM read_json_objects({p}, format='array')"
    )
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _raw AS {src}")
        return []
    except duckdb.Error:
        pass
    try:
        with _open_text(path) as fh:
            parse_json(fh.read())
        detail = "not a list of post objects"
    except BadJSON as exc:
        detail = str(exc)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _raw (rec BIGINT, path VARCHAR, line BIGINT, raw JSON, "
        "file VARCHAR)"
    )
    return [Problem(str(path), None, "bad-metadata", detail)]


def read_parquet_groups(con: duckdb.DuckDBPyConnection, path: Path) -> list[Problem]:
    """Temp table `_raw` from the row groups of a Parquet dump that read, one at a time.

    The fallback for a dump DuckDB failed on mid-way (a corrupt data page): each row group
    that does not decode is a problem naming its rows, the others are ingested.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = _sql_str(str(path))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _raw (rec BIGINT, path VARCHAR, line BIGINT, raw JSON, "
        "file VARCHAR)"
    )
    try:
        groups = pq.ParquetFile(path)
        total = groups.metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        return [
            Problem(
                str(path), None, "bad-metadata", f"not a readable Parquet file: {_first_line(exc)}"
            )
        ]
    failed: list[tuple[int, int, int, str]] = []
    start = read = 0
    for i in range(groups.num_row_groups):
        rows = groups.metadata.row_group(i).num_rows
        try:
            con.register("_group_py", groups.read_row_group(i))
            con.execute(
                f"INSERT INTO _raw SELECT NULL, {p}, NULL, to_json(t), NULL FROM _group_py t"
            )
            read += rows
        except (OSError, pa.ArrowException, duckdb.Error) as exc:
            failed.append((i, start, rows, _first_line(exc)))
        finally:
            con.unregister("_group_py")
        start += rows
    n = groups.num_row_groups
    return [
        Problem(
            str(path),
            None,
            "bad-metadata",
            f"row group {i + 1} of {n} (rows {first + 1} to {first + rows}) is corrupt "
            f"({reason}); skipped, {read} of {total} rows read",
        )
        for i, first, rows, reason in failed
    ]


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
