"""`write_report(ws)`: gather every section, render the page, write it and its assets.

The page goes to `WS/out/report.html` (temp name, then rename), its charts and thumbnails to
`WS/out/report/`. A file at that path that this module did not write is never replaced
without `force`. The catalog is opened read-only; when another tagtune process holds it, the
sections that need it say so and the rest of the page is still written.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tagtune.core.atomic import write_text_atomic
from tagtune.core.catalog import connect
from tagtune.core.errors import TagtuneError, WorkspaceError
from tagtune.core.workspace import Workspace, open_workspace
from tagtune.recipe.workspace import workspace_recipe
from tagtune.report.assets import Assets, referenced
from tagtune.report.crops import buckets_section
from tagtune.report.dataset import dataset_section
from tagtune.report.outputs import outputs_section, size_text
from tagtune.report.page import render_page, written_by_us
from tagtune.report.runs import runs_section

REPORT_NAME = "report.html"


@dataclass
class ReportResult:
    """Where the page went, how big it and its assets are, and how long it took."""

    path: Path
    assets: Path
    page_bytes: int
    asset_bytes: int
    assets_count: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary for the CLI."""
        return {
            "path": str(self.path),
            "assets": str(self.assets),
            "page_bytes": self.page_bytes,
            "asset_bytes": self.asset_bytes,
            "assets_count": self.assets_count,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
        }

    def summary(self) -> str:
        """One line for the terminal."""
        return (
            f"{self.path} ({size_text(self.page_bytes)} + {self.assets_count} files, "
            f"{size_text(self.asset_bytes)} in {self.assets.name}/) in {self.seconds:.1f} s"
        )


def report_path(ws: Workspace, out: str | Path | None = None) -> Path:
    """The page's path: `out`, or WS/out/report.html."""
    return Path(out) if out else ws.out_dir / REPORT_NAME


def check_target(page: Path, force: bool = False) -> None:
    """Refuse to replace a file that is not a page tagtune wrote (unless `force`)."""
    if page.is_dir():
        raise WorkspaceError("is a folder, not a page", file=page, hint="give a file name")
    if page.exists() and not force and not written_by_us(page):
        raise WorkspaceError(
            "exists and is not a report tagtune wrote; it is kept",
            file=page,
            hint="use --force to replace it, or --out to write elsewhere",
        )


def _now() -> str:
    return dt.datetime.now().astimezone().replace(microsecond=0).isoformat(" ")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tagtune")
    except PackageNotFoundError:
        return "?"


def _catalog(ws: Workspace):
    """(read-only connection or None, note): a missing or busy catalog is a note, not an error."""
    if not ws.catalog_path.is_file():
        return None, "no catalog yet: run `tagtune ingest WS SOURCE`"
    try:
        con = connect(ws.catalog_path, read_only=True)
    except TagtuneError as exc:
        return None, f"catalog not readable now ({exc.message()}); the next rewrite tries again"
    con.execute("SET enable_progress_bar = false")  # DuckDB's bar would land in --json output
    return con, ""


def write_report(
    ws: Workspace | str | Path,
    out: str | Path | None = None,
    force: bool = False,
    refresh: float | None = None,
) -> ReportResult:
    """Write the workspace's report page and its assets; `refresh` (seconds) makes the page
    reload itself (the watch loop's rewrites)."""
    start = time.perf_counter()
    ws = ws if isinstance(ws, Workspace) else open_workspace(ws)
    page = report_path(ws, out)
    check_target(page, force)
    assets = Assets(page.parent / page.stem)
    previous = page.read_text(encoding="utf-8", errors="replace") if page.is_file() else ""
    notes: list[str] = []
    try:
        recipe = workspace_recipe(ws)
        subsets, title = [s.subset for s in recipe.train.stages], recipe.project.name
    except TagtuneError as exc:
        subsets, title = [], ws.root.name
        notes.append(f"recipe not readable: {exc.message()}")
    con, catalog_note = _catalog(ws)
    try:
        dataset = dataset_section(con, assets) if con is not None else None
        buckets = buckets_section(con, ws, subsets, assets) if con is not None else None
        outputs = outputs_section(con, ws, page)
    finally:
        if con is not None:
            con.close()
    runs = runs_section(ws.runs_dir, assets)
    html = render_page(
        title=title,
        workspace=str(ws.root.resolve()),
        written=_now(),
        version=_version(),
        refresh=f"{refresh:g}" if refresh else None,
        notes=notes + [f"{a}: thumbnail not drawn ({why})" for a, why in assets.failed],
        dataset=dataset,
        buckets=buckets,
        dataset_note=catalog_note,
        runs=runs,
        outputs=outputs,
    )
    write_text_atomic(page, html)
    assets.prune(referenced(previous, assets.folder.name))
    return ReportResult(
        path=page,
        assets=assets.folder,
        page_bytes=page.stat().st_size,
        asset_bytes=assets.bytes_used(),
        assets_count=len(assets.used),
        seconds=time.perf_counter() - start,
        notes=notes + ([catalog_note] if catalog_note else []),
    )
