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
        base: Path | None = typer.Option(
            None, "--base", help="Base model (SDXL .safetensors or diffusers folder): model.base."
        ),
        profile: str | None = typer.Option(
            None, "--profile", help="reference (default), 24gb (same as reference) or cpu-tiny."
        ),
    ) -> None:
        """Create a workspace folder with a commented recipe for this machine.

        Example: tagtune init ws --base tiny.safetensors --profile cpu-tiny
        """
        from tagtune.recipe.workspace import init_workspace

        w = init_workspace(ws, force=force, profile=profile, base=base)
        console.print(
            Text.assemble("created ", (str(w.recipe_path), "bold"), " (stages: main, favorites)")
        )
        if base is None:
            console.print(
                Text.assemble(
                    "next: set ", ("model.base", "bold"), " in the recipe, then `tagtune ingest`"
                )
            )
        else:
            console.print("next: `tagtune ingest`")
