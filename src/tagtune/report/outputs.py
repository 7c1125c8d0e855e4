"""The report's Outputs section: what would be published.

Exported checkpoints with the hashes run.json recorded (AutoV2 first, as model sites show
it), the other files in `WS/out/` and the per-epoch exports with their sizes, the model card
rendered from its Markdown (raw HTML in it is shown as text, never run), and the
recommended tags of the latest `tags suggest`.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from tagtune.core.workspace import Workspace
from tagtune.tags.analytics import prompt_line

HASH_LABELS = (
    ("autov2", "AutoV2"),
    ("sha256", "SHA-256"),
    ("autov1", "AutoV1"),
    ("autov3", "AutoV3"),
    ("crc32", "CRC32"),
    ("blake3", "BLAKE3"),
)
LISTED = {".safetensors", ".ckpt", ".md", ".png", ".jpg", ".jpeg", ".webp", ".json", ".txt"}


@dataclass
class Export:
    """One exported checkpoint of a run, with its recorded hashes."""

    run: str
    path: str
    size: str
    hashes: list[tuple[str, str]]


@dataclass
class OutputsSection:
    """What the Outputs section shows."""

    exports: list[Export] = field(default_factory=list)
    files: list[tuple[str, str, str]] = field(default_factory=list)
    """(path, size, modified) of the other output files."""
    card_name: str = ""
    card_html: str = ""
    recommended_subset: str = ""
    recommended: list[tuple[int, str, float, int]] = field(default_factory=list)
    prompt: str = ""


def size_text(n: int) -> str:
    """Bytes as B, KiB, MiB or GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{n} B"


def render_markdown(text: str) -> str:
    """CommonMark + tables as HTML; raw HTML in the text is escaped, unsafe links dropped."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _exports(ws: Workspace) -> list[Export]:
    out = []
    for run_file in sorted(ws.runs_dir.glob("*/run.json")):
        try:
            export = json.loads(run_file.read_text(encoding="utf-8")).get("export")
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(export, dict) or not export.get("path"):
            continue
        file = ws.resolve(export["path"])
        hashes = export.get("hashes") or {}
        out.append(
            Export(
                run=run_file.parent.name,
                path=str(export["path"]),
                size=size_text(file.stat().st_size) if file.is_file() else "missing",
                hashes=[(label, str(hashes[k])) for k, label in HASH_LABELS if hashes.get(k)],
            )
        )
    return out


def _files(ws: Workspace, page: Path, exported: set[Path]) -> list[tuple[str, str, str]]:
    """Other output files: `WS/out/` (not the report itself) and per-epoch exports."""
    found = [p for p in ws.out_dir.glob("*") if p.is_file() and p.suffix.lower() in LISTED]
    found += list(ws.runs_dir.glob("*/*/exports/*.safetensors"))
    rows = []
    for p in sorted(found):
        if p.resolve() in exported or p.resolve() == page.resolve():
            continue
        st = p.stat()
        stamp = dt.datetime.fromtimestamp(st.st_mtime).replace(microsecond=0).isoformat(" ")
        rows.append((p.relative_to(ws.root).as_posix(), size_text(st.st_size), stamp))
    return rows


def _card(ws: Workspace, exports: list[Export]) -> tuple[str, str]:
    """The model card of the first export (WS/out/<stem>.md), else the newest card in out/."""
    candidates = [ws.out_dir / f"{Path(e.path).stem}.md" for e in exports]
    candidates += sorted(ws.out_dir.glob("*.md"), key=lambda p: -p.stat().st_mtime)
    for path in candidates:
        if path.is_file():
            return path.name, render_markdown(path.read_text(encoding="utf-8", errors="replace"))
    return "", ""


def _recommended(con: duckdb.DuckDBPyConnection) -> tuple[str, list]:
    latest = con.execute(
        "SELECT subset FROM recommended_tags ORDER BY built_at DESC, subset LIMIT 1"
    ).fetchone()
    if latest is None:
        return "", []
    rows = con.execute(
        "SELECT rank, tag, jaccard, count FROM recommended_tags WHERE subset = ? ORDER BY rank",
        [latest[0]],
    ).fetchall()
    return str(latest[0]), rows


def outputs_section(
    con: duckdb.DuckDBPyConnection | None, ws: Workspace, page: Path
) -> OutputsSection:
    """Gather the Outputs section (`con`: the catalog read-only, or None without one)."""
    section = OutputsSection(exports=_exports(ws))
    exported = {ws.resolve(e.path).resolve() for e in section.exports}
    section.files = _files(ws, page, exported)
    section.card_name, section.card_html = _card(ws, section.exports)
    if con is not None:
        section.recommended_subset, section.recommended = _recommended(con)
        section.prompt = prompt_line([str(r[1]) for r in section.recommended])
    return section
