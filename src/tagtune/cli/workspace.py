"""`tagtune init`: create a workspace with the reference recipe."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from tagtune.cli.common import console


def register(app: typer.Typer) -> None:
    """Add `init` to the app."""

    @app.command()
    def init(
        ws: Path = typer.Argument(..., help="Workspace folder to create."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing tagtune.toml."),
    ) -> None:
        """Create a workspace folder with a commented recipe (the reference workflow)."""
        from tagtune.recipe.workspace import init_workspace

        w = init_workspace(ws, force=force)
        console.print(
            Text.assemble("created ", (str(w.recipe_path), "bold"), " (stages: main, favorites)")
        )
        console.print(
            Text.assemble(
                "next: set ", ("model.base", "bold"), " in the recipe, then `tagtune ingest`"
            )
        )
