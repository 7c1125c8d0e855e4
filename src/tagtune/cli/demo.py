"""`tagtune demo`: the whole pipeline on synthetic data and a tiny model, then where things are."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from tagtune.cli.common import console, print_json


def register(app: typer.Typer) -> None:
    """Add `demo` to the app."""

    @app.command()
    def demo(
        folder: Path = typer.Argument(
            Path("demo-workspace"), help="Folder to create (replaced if it exists)."
        ),
        quick: bool = typer.Option(False, "--quick", help="The reduced size the test suite runs."),
        seed: int = typer.Option(0, "--seed", help="Seed of the collection and the tiny model."),
        as_json: bool = typer.Option(
            False, "--json", help="Print one JSON object instead of tables."
        ),
    ) -> None:
        """Run ingest, caption, tags, prepare, train (2 stages), export, hash, card and generate."""
        from rich.table import Table

        from tagtune.demo import FULL, REDUCED, run_demo

        def step(name: str) -> None:
            if not as_json:
                console.print(Text.assemble(("==>", "bold cyan"), f" {name}"))

        result = run_demo(
            folder, REDUCED if quick else FULL, seed=seed, step=step, show_progress=not as_json
        )
        if as_json:
            print_json(
                {
                    "paths": {k: str(v) for k, v in result.paths.items()},
                    "timings": result.timings,
                    "facts": result.facts,
                }
            )
            return
        table = Table(title="tagtune demo: where everything is")
        table.add_column("what")
        table.add_column("path")
        for name, path in result.paths.items():
            table.add_row(name, str(path))
        console.print(table)
        _print_validation(result.facts["validation"])
        hashes = result.facts["hashes"]
        console.print(
            Text.assemble(
                "model AutoV2 ", (hashes["autov2"], "bold"), f"  SHA-256 {hashes['sha256']}"
            )
        )
        console.print(f"recommended prompt: {result.facts['recommended']}")
        total = sum(result.timings.values())
        console.print(
            "timings: "
            + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
            + f" (total {total:.0f}s)"
        )
        console.print(
            Text.assemble(
                "report: ", (str(result.paths["report"]), "bold"), " (open it in a browser)"
            )
        )


def _print_validation(facts: dict) -> None:
    from rich.table import Table

    from tagtune.train.validation import format_gap, format_loss

    table = Table(title="validation on held-out images (never trained on)")
    for col in ("stage", "images", "loss before -> after", "conditioning gap before -> after"):
        table.add_column(col)
    for name, v in facts.items():
        b, a = v["before"], v["after"]
        table.add_row(
            name,
            str(v["images"]),
            f"{format_loss(b['loss'])} -> {format_loss(a['loss'])}",
            f"{format_gap(b['conditioning_gap'])} -> {format_gap(a['conditioning_gap'])}",
        )
    console.print(table)
