"""Writing built captions: the `captions` table in one transaction, and captions.jsonl.

The table is replaced by one INSERT that reads chunks as the builder queues them, on a writer
thread with its own cursor (DuckDB releases the GIL, so inserting overlaps building). The
jsonl is written by DuckDB's COPY, in id order whatever DuckDB's settings.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from pathlib import Path

from tagtune.core.atomic import atomic_path
from tagtune.core.catalog import SCHEMA

BATCH_ROWS = 25_000
"""Rows per Arrow record batch handed to DuckDB (it can scan batches in parallel)."""


class ChunkWriter(threading.Thread):
    """Replaces the `captions` table with the built chunks, in one transaction.

    Runs on its own cursor; one INSERT reads every chunk, in order, as it is queued. The
    first error is kept in `error` (the transaction is rolled back, later chunks dropped).
    """

    def __init__(self, con) -> None:
        super().__init__(name="tagtune-caption-writer", daemon=True)
        self._cur = con.cursor()
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self._ok = False

    def put(self, rows) -> None:
        """Queue one built chunk's table rows (blocks while two are waiting)."""
        self._queue.put(rows)

    def finish(self, ok: bool) -> None:
        """Commit (`ok`: every chunk was queued) or roll back; wait until it is done."""
        self._ok = ok
        self._queue.put(None)
        self.join()

    def run(self) -> None:
        cur = self._cur
        self._ended = False  # the builder's end-of-chunks mark was taken
        try:
            cur.execute("BEGIN TRANSACTION")
            cur.execute("DROP TABLE captions")  # much faster than deleting every row
            cur.execute(SCHEMA)  # creates it again, empty
            first = self._next()
            if first is not None:  # one INSERT for all: a commit of many costs seconds
                _insert_captions(cur, self._stream(first))
            self._ended = True
            if not self._ok:
                raise _Aborted()
            cur.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            if self.error is None and self._ok:  # else the builder raises its own error
                self.error = exc
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            while not self._ended and self._queue.get() is not None:  # let the builder finish
                pass
        finally:
            cur.close()

    def _next(self):
        """The next chunk's captions table rows; None at the end."""
        rows = self._queue.get()
        self._ended = rows is None
        return rows

    def _stream(self, first):
        """A record batch reader over every chunk, read by DuckDB while chunks are built."""
        import pyarrow as pa

        def batches():  # runs on DuckDB's scan threads, one at a time
            rows = first
            try:
                while rows is not None:
                    yield from rows.to_batches(max_chunksize=BATCH_ROWS)
                    rows = self._next()
            except BaseException as exc:
                self.error = self.error or exc  # the first error, not DuckDB's wrapping of it
                raise
            if not self._ok:
                raise _Aborted()

        return pa.RecordBatchReader.from_batches(first.schema, batches())


def chunk_tables(chunk, res):
    """(captions table rows, captions.jsonl rows) of one built chunk, as Arrow tables."""
    import pyarrow as pa

    tokens = pa.array(res.tokens, pa.int32())
    rows = pa.table({"post_id": chunk.column("id"), "caption": res.caption, "tags": res.tags,
                     "groups": res.groups, "tokens": tokens})  # fmt: skip
    lines = pa.table(
        {
            "id": chunk.column("id"),
            "md5": chunk.column("md5"),
            "file": chunk.column("file"),
            "caption": res.caption,
            "tokens": tokens,
            "favorite": chunk.column("favorite"),
        }
    )
    return rows, lines


def concat_chunks(tables: list):
    """One Arrow table of all chunks (no copy: the columns become chunked)."""
    import pyarrow as pa

    return _batched(pa.concat_tables(tables))


def _batched(table):
    """The same rows in record batches of at most BATCH_ROWS (no copy).

    DuckDB scans an Arrow table one record batch per thread: one big batch would be
    written by one thread.
    """
    import pyarrow as pa

    return pa.Table.from_batches(table.to_batches(max_chunksize=BATCH_ROWS), table.schema)


class _Aborted(Exception):
    """The builder stopped early: roll back."""


def _insert_captions(cur, table) -> None:
    """Insert `table`'s rows into `captions` (inside the writer's transaction)."""
    cur.register("_new_captions", table)
    cur.execute("SET preserve_insertion_order = false")  # lets DuckDB write in parallel
    try:
        cur.execute(
            "INSERT INTO captions (post_id, caption, tags, groups, tokens) "
            "SELECT post_id, caption, tags, groups, tokens FROM _new_captions"
        )
    finally:
        cur.execute("RESET preserve_insertion_order")  # later statements keep row order
        cur.unregister("_new_captions")


def write_jsonl(con, table, path: Path, atomic: bool = True, order_by: str = "") -> None:
    """Write an Arrow table as JSON lines (one object per row, columns in order), atomically.

    Rows keep the table's order, or follow `order_by` (a column) whatever DuckDB's settings.
    """
    con.register("_jsonl_rows", table)
    rows = f"(SELECT * FROM _jsonl_rows ORDER BY {order_by})" if order_by else "_jsonl_rows"
    try:
        with atomic_path(path) if atomic else contextlib.nullcontext(path) as tmp:
            con.execute(f"COPY {rows} TO '{_sql_path(tmp)}' (FORMAT json)")
    finally:
        con.unregister("_jsonl_rows")


def _sql_path(path: Path) -> str:
    return os.fspath(path).replace("'", "''")
