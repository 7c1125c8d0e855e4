"""`tagtune export WS`: a run's trained stages as one single-file SDXL checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from tagtune.cli.common import console, print_json
from tagtune.core.workspace import open_workspace


def register(app: typer.Typer) -> None:
    """Add the `export` verb."""

    @app.command("export")
    def export(
        workspace: Path = typer.Argument(..., help="Workspace folder."),
        run: str = typer.Option(None, "--run", help="Run name (default: the recipe's)."),
        stage: str = typer.Option(
            None, "--stage", help="Stage to export (default: the last completed)."
        ),
        out: Path = typer.Option(
            None, "--out", help="Output file (default: out/<project.name>.safetensors)."
        ),
        dtype: str = typer.Option(
            None, "--dtype", help="fp16, bf16 or fp32 (default: the recipe's)."
        ),
        force: bool = typer.Option(
            False, "--force", help="Replace an existing output (never the base model)."
        ),
        ema: bool = typer.Option(
            False, "--ema", help="Export the stage's EMA weights (it trained with ema_decay)."
        ),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Write a single-file SDXL checkpoint from a run's last completed stage.

        Example: tagtune export my-ws --dtype fp16
        """
        from tagtune.train.export import export_model

        result = export_model(
            open_workspace(workspace), run=run, stage=stage, out=out, dtype=dtype, force=force,
            ema=ema,
        )  # fmt: skip
        if json_out:
            print_json(result)
            return
        console.print(
            Text.assemble(
                "exported stage ",
                (result.stage, "bold"),
                " (EMA)" if ema else "",
                f" to {result.path}",
            )
        )
        for name, value in result.hashes.items():
            console.print(f"  {name}: {value}")
