"""`tagtune ingest`, `tagtune favorites`, `tagtune status`: build and inspect the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from tagtune.cli.common import console, err_console, print_json
from tagtune.core.workspace import open_workspace


def _counts_table(title: str, summary: dict[str, Any]):
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("posts", "images", "favorites"):
        table.add_row(key, str(summary[key]))
    for group in ("excluded", "problems"):
        total = sum(summary[group].values())
        table.add_row(group, str(total))
        for reason, n in summary[group].items():
            table.add_row(f"  {reason}", str(n))
    return table


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        transient=True,
        disable=not enabled or not err_console.is_terminal,  # no stray blank line in logs
    )


def register(app: typer.Typer) -> None:
    """Add `ingest`, `favorites` and `status` to the app."""

    @app.command()
    def ingest(
        ws: Path = typer.Argument(
            ..., metavar="WS", help="Workspace folder (created by `tagtune init`)."
        ),
        sources: list[Path] = typer.Argument(
            ...,
            metavar="SOURCE",
            help="Folders of images with gallery-dl sidecars, API .json lists, .jsonl or "
            ".parquet dumps.",
        ),
        images: Path | None = typer.Option(
            None, "--images", help="Images folder for .json/.jsonl/.parquet sources (by md5 or id)."
        ),
        favorites: Path | None = typer.Option(
            None, "--favorites", help="Favorites list: one post id or md5 per line."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Build or update the workspace catalog from SOURCEs (re-running changes nothing)."""
        from tagtune.ingest import ingest as run_ingest

        w = open_workspace(ws)
        with _progress(not as_json) as progress:
            summary = run_ingest(w, list(sources), images=images, favorites=favorites,
                                 progress=progress)  # fmt: skip
        added = summary.pop("added")
        if as_json:
            print_json(summary)
            return
        console.print(_counts_table(f"catalog {w.catalog_path}", summary))
        for src, a in added.items():
            console.print(
                f"{src}: +{a['posts']} posts, +{a['images']} images, {a['problems']} problems"
            )

    @app.command()
    def favorites(
        ws: Path = typer.Argument(..., metavar="WS", help="Workspace folder."),
        file: Path = typer.Argument(
            ..., metavar="FILE", help="Favorites list: one post id or md5 per line."
        ),
        replace: bool = typer.Option(
            False, "--replace", help="Unmark every post not in FILE (default: only add)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Re-mark favorites from a list without re-ingesting; unknown entries are reported."""
        from tagtune.ingest import update_favorites

        result = update_favorites(open_workspace(ws), file, replace=replace)
        data = {
            "entries": result.entries,
            "marked": result.marked,
            "favorites": result.favorites,
            "unknown": [e.text for e in result.unknown],
            "invalid": [e.line for e in result.invalid],
        }
        if as_json:
            print_json(data)
            return
        console.print(
            f"{result.entries} entries: {result.marked} newly marked, "
            f"{result.favorites} favorites in total"
        )
        if result.unknown:
            shown = ", ".join(e.text for e in result.unknown[:10])
            more = f" (+{len(result.unknown) - 10} more)" if len(result.unknown) > 10 else ""
            console.print(
                Text.assemble((f"{len(result.unknown)} unknown:", "yellow"), f" {shown}{more}")
            )
        if result.invalid:
            lines = ", ".join(str(e.line) for e in result.invalid[:10])
            console.print(
                Text.assemble((f"{len(result.invalid)} invalid lines:", "yellow"), f" {lines}")
            )

    @app.command()
    def status(
        ws: Path = typer.Argument(..., metavar="WS", help="Workspace folder."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Counts in the catalog: posts, images, favorites, per rating, per year, problems."""
        from rich.table import Table

        from tagtune.ingest import read_status

        data = read_status(open_workspace(ws))
        if as_json:
            print_json(data)
            return
        console.print(_counts_table("catalog", data))
        console.print(
            f"included {data['included']}, with an image {data['trainable']}, "
            f"captions {data['captions']}"
        )
        for key, title in (("ratings", "rating"), ("years", "year")):
            table = Table(title=f"per {title} (included posts)", header_style="bold")
            table.add_column(title)
            table.add_column("posts", justify="right")
            for k, n in data[key].items():
                table.add_row(k, str(n))
            console.print(table)
