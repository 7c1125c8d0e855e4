"""`tagtune card`: the model card from the run's own records."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from tagtune.cli.common import console, print_json


def register(app: typer.Typer) -> None:
    """Add `card` to the app."""

    @app.command()
    def card(
        ws: Path = typer.Argument(..., help="Workspace folder."),
        run: str | None = typer.Option(None, "--run", help="Run name (default: the recipe's)."),
        out: Path | None = typer.Option(
            None, "--out", help="Card file (default: WS/out/<model>.md)."
        ),
        force: bool = typer.Option(False, "--force", help="Replace an existing card."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Write the model card (Markdown) from run.json, the catalog and the export's hashes."""
        from tagtune.card import write_card

        path = write_card(ws, run=run, out=out, force=force)
        if as_json:
            print_json({"card": str(path)})
            return
        console.print(Text.assemble("wrote ", (str(path), "bold")))
