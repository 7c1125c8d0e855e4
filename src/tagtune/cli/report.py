"""`tagtune report`: one HTML page that shows the workspace and its runs (or keeps it current)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from tagtune.cli.common import console, err_console, print_json


def register(app: typer.Typer) -> None:
    """Add `report` to the app."""

    @app.command()
    def report(
        ws: Path = typer.Argument(..., help="Workspace folder."),
        out: Path | None = typer.Option(
            None, "--out", help="Page to write (default: WS/out/report.html; assets beside it)."
        ),
        watch: bool = typer.Option(
            False, "--watch", help="Rewrite the page every --every seconds until Ctrl-C."
        ),
        every: float = typer.Option(30.0, "--every", help="Seconds between rewrites (--watch)."),
        force: bool = typer.Option(
            False, "--force", help="Replace a file at the page's path that tagtune did not write."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Write WS/out/report.html: dataset, buckets and crops, runs (loss, lr, validation,
        resumes, samples) and outputs (hashes, model card, recommended tags)."""
        from tagtune.report import watch_report, write_report

        if not watch:
            result = write_report(ws, out=out, force=force)
            if as_json:
                print_json(result.to_json())
            else:
                console.print(f"wrote {result.summary()}")
            return
        if not as_json:
            console.print(f"rewriting every {every:g} s; Ctrl-C stops")
        result = watch_report(
            ws,
            every=every,
            out=out,
            force=force,
            on_write=None if as_json else lambda r: console.print(f"wrote {r.summary()}"),
            on_error=lambda msg: err_console.print(
                Text.assemble(("skipped a rewrite:", "yellow"), f" {msg}")
            ),
        )
        if as_json:
            print_json(result.to_json() if result else {"path": None})
        elif result is not None:
            console.print(f"stopped; the page is {result.path}")
