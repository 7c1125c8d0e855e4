"""`tagtune report WS --watch`: rewrite the page every N seconds until Ctrl-C.

Each rewrite is atomic, so a viewer never reads half a page; the page reloads itself on the
same period. A round that fails (a run.json caught mid-rename, a catalog held by a writer)
is reported through `on_error` and retried at the next tick. Ctrl-C (or SIGTERM, which the
CLI turns into the same) stops the loop and writes the page once more without the reload
script, so the last page left behind is a plain, static one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from tagtune.core.errors import InputError, TagtuneError
from tagtune.core.workspace import Workspace, open_workspace
from tagtune.report.build import ReportResult, write_report

MIN_EVERY = 1.0


def watch_report(
    ws: Workspace | str | Path,
    every: float = 30.0,
    out: str | Path | None = None,
    force: bool = False,
    on_write: Callable[[ReportResult], None] | None = None,
    on_error: Callable[[str], None] | None = None,
    rounds: int | None = None,
) -> ReportResult | None:
    """Rewrite the report every `every` seconds (`rounds` caps the count, for tests) until
    interrupted; returns the last result (None if no round succeeded). A round that fails
    goes to `on_error` (its message) and the next tick tries again; without `on_error` it
    raises."""
    if not every >= MIN_EVERY:
        raise InputError(
            "the watch period is too short", field="every", value=every, allowed=f">= {MIN_EVERY}"
        )
    ws = ws if isinstance(ws, Workspace) else open_workspace(ws)
    last: ReportResult | None = None
    done = 0
    try:
        while rounds is None or done < rounds:
            started = time.monotonic()
            try:
                last = write_report(ws, out=out, force=force and done == 0, refresh=every)
            except (TagtuneError, OSError, duckdb.Error) as exc:
                # a file renamed or pruned under the reader, a catalog being rewritten
                if on_error is None:
                    raise
                on_error(exc.message() if isinstance(exc, TagtuneError) else str(exc))
            else:
                if on_write is not None:
                    on_write(last)
            done += 1
            if rounds is None or done < rounds:
                time.sleep(max(0.0, every - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass
    if last is not None:
        last = write_report(ws, out=out)
    return last
