"""`tagtune caption`: build training captions from the catalog's Danbooru metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from tagtune.cli.common import console, print_json
from tagtune.core.workspace import open_workspace


def _print_show(info: dict[str, Any]) -> None:
    from rich.table import Table

    if info["excluded"] is not None:
        console.print(f"post {info['id']} is excluded ({info['excluded']}): it gets no caption")
    table = Table(title=f"post {info['id']}", show_lines=False)
    table.add_column("group")
    table.add_column("tags")
    table.add_column("why", style="dim")
    for row in info["groups"]:
        table.add_row(row["group"], ", ".join(row["tags"]) or "-", row["why"])
    console.print(table)
    if info["caption"] is not None:
        console.print(
            Text.assemble(("caption", "bold"), f" ({info['tokens']} tokens, {info['tokenizer']}):")
        )
        console.print(info["caption"], markup=False, soft_wrap=True)


def _print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="captions", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("captions written", f"{s['captions']} ({s['with_file']} with an image, "
                  f"{s['without_file']} metadata only; {s['excluded']} excluded posts skipped)")  # fmt: skip
    table.add_row("tokens", f"mean {s['tokens_mean']}, max {s['tokens_max']} ({s['tokenizer']})")
    table.add_row("over 75 / 150 / 225", " / ".join(str(v) for v in s["over"].values()))
    hist = ", ".join(
        f"{h['from']}-{h['to'] if h['to'] is not None else ''}: {h['count']}"
        for h in s["histogram"]
        if h["count"]
    )
    table.add_row("token histogram", hist or "-")
    groups = ", ".join(f"{g} {v['mean']}" for g, v in s["group_tokens"].items())
    table.add_row("tokens per caption by group", groups or "-")
    for key in ("quality", "rating", "period"):
        table.add_row(key, ", ".join(f"{k} {v}" for k, v in s[key].items()) or "-")
    table.add_row("missing", ", ".join(f"{k} {v}" for k, v in s["missing"].items()))
    if s["empty"]:
        table.add_row("empty captions", str(s["empty"]))
    if s["sidecars"]:
        where = f" in {s['sidecars_dir']}" if s["sidecars_dir"] else ""
        table.add_row("sidecars", Text(f"{s['sidecars']}{where}"))
    if s["sidecars_removed"]:
        table.add_row("sidecars removed (excluded posts)", str(s["sidecars_removed"]))
    if s["sidecars_kept"]:
        table.add_row("sidecars of excluded posts kept (changed since)", str(s["sidecars_kept"]))
    table.add_row("written", f"{s['jsonl']} in {s['seconds']} s")
    console.print(table)
    if s["tokenizer"] != "clip-bpe":
        console.print(
            Text("token counts are approximate: the CLIP vocabulary is missing", style="yellow")
        )


def register(app: typer.Typer) -> None:
    """Add `caption` to the app."""

    @app.command()
    def caption(
        ws: Path = typer.Argument(..., help="Workspace folder."),
        sidecars: bool = typer.Option(
            False, "--sidecars", help="Also write NAME.txt beside each image (kohya convention)."
        ),
        sidecars_dir: Path | None = typer.Option(
            None, "--sidecars-dir", metavar="DIR", help="Write the NAME.txt sidecars into DIR."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace sidecar files tagtune did not write (yours)."
        ),
        show: int | None = typer.Option(
            None, "--show", metavar="ID", help="Only show this post's caption, group by group."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Build every included post's caption: catalog table, captions.jsonl, optional sidecars."""
        from tagtune.captions.build import build_captions, show_caption

        w = open_workspace(ws)
        side = {"sidecars": sidecars, "sidecars_dir": sidecars_dir, "overwrite": overwrite}
        if show is not None:
            info = show_caption(w, show)
            if as_json:
                print_json(info)
            else:
                _print_show(info)
            return
        if as_json:
            print_json(build_captions(w, **side).to_json())
            return
        from rich.progress import Progress

        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("captions", total=None)

            def progress(step: str, done: int, total: int) -> None:
                bar.update(task, description=step, completed=done, total=total)

            summary = build_captions(w, **side, progress=progress)
        _print_summary(summary.to_json())
