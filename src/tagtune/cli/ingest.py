"""`tagtune ingest`, `tagtune favorites`, `tagtune status`: build and inspect the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from tagtune.cli.common import console, print_json
from tagtune.core.progress import Progress
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


def _origins_table(data: dict[str, Any]):
    from rich.table import Table

    table = Table(title="per source", header_style="bold")
    for col in ("source", "posts", "included", "images"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for origin, c in data["origins"].items():
        table.add_row(origin, str(c["posts"]), str(c["included"]), str(c["images"]))
    for folder, c in data["folders"].items():
        table.add_row(f"  {folder} (x{c['repeats']})", "", str(c["posts"]), "")
    return table


def _caption_file_notes(data: dict[str, Any]) -> list[str]:
    """One line per SOURCE with caption files: the `ingest.caption_files` choice and what won."""
    lines = []
    for src, note in data["caption_files"].items():
        mode, both = note["mode"], note["with_metadata_sidecar"]
        won = {"metadata-first": "metadata won", "prefer": "the caption file won"}.get(
            mode, "caption files ignored"
        )
        extra = f"; {both} image(s) had both a caption file and metadata: {won}" if both else ""
        lines.append(
            f"{src}: {note['caption_files']} caption file(s), caption_files = {mode}{extra}"
        )
    return lines


def _problems_table(listing):
    from rich.table import Table

    title = f"problems ({listing.reason})" if listing.reason else "problems"
    table = Table(title=f"{title}: {listing.total}", header_style="bold")
    for col in ("file", "post", "reason", "detail"):
        table.add_column(col, overflow="fold")
    for r in listing.rows:
        post = "" if r.post is None else str(r.post)
        table.add_row(r.file or "", post, f"{r.stage}/{r.reason}", r.detail or "")
    return table


def _progress(enabled: bool):
    return Progress(enabled=enabled)


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
            help="Folders of images with gallery-dl sidecars or kohya-style caption files "
            "(.txt/.caption), API .json lists, .jsonl or .parquet dumps, sd-scripts dataset .toml.",
        ),
        images: Path | None = typer.Option(
            None, "--images", help="Images folder for .json/.jsonl/.parquet sources (by md5 or id)."
        ),
        favorites: Path | None = typer.Option(
            None, "--favorites", help="Favorites list: one post id or md5 per line."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Build or update the workspace catalog from SOURCEs (re-running changes nothing).

        Example: tagtune ingest my-ws posts.jsonl --images ~/danbooru/images
        """
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
        """Re-mark favorites from a list without re-ingesting; unknown entries are reported.

        Example: tagtune favorites my-ws favorites.txt --replace
        """
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
        problems: bool = typer.Option(
            False, "--problems", help="List the problem rows (file, post, reason, detail)."
        ),
        reason: str | None = typer.Option(
            None, "--reason", help="Only problems of this reason (implies --problems)."
        ),
        limit: int | None = typer.Option(
            None, "--limit", help="Problem rows to list (default 50; 0 = all)."
        ),
    ) -> None:
        """Counts in the catalog: posts, images, favorites, per source, per rating, per year, problems.

        Example: tagtune status WS --problems --reason bad-field
        """
        from rich.table import Table

        from tagtune.ingest import read_status

        if problems or reason is not None:
            from tagtune.ingest.problem_list import list_problems

            listing = list_problems(open_workspace(ws), reason=reason, limit=limit)
            if as_json:
                print_json(listing.to_json())
                return
            console.print(_problems_table(listing))
            if listing.left_out:
                console.print(f"... and {listing.left_out} more (--limit 0 lists them all)")
            return
        data = read_status(open_workspace(ws))
        if as_json:
            print_json(data)
            return
        console.print(_counts_table("catalog", data))
        console.print(
            f"included {data['included']}, with an image {data['trainable']}, "
            f"captions {data['captions']}"
        )
        console.print(_origins_table(data))
        for line in _caption_file_notes(data):
            console.print(line, highlight=False, soft_wrap=True)
        for key, title in (("ratings", "rating"), ("years", "year")):
            table = Table(title=f"per {title} (included posts)", header_style="bold")
            table.add_column(title)
            table.add_column("posts", justify="right")
            for k, n in data[key].items():
                table.add_row(k, str(n))
            console.print(table)
