"""`tagtune clean WS`: report and free the disk space tagtune's own leftovers take."""

from __future__ import annotations

from pathlib import Path

import typer

from tagtune.cli.common import console, print_json
from tagtune.core.workspace import open_workspace


def _size(n: int) -> str:
    for unit, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= unit:
            return f"{n / unit:.1f} {name}"
    return f"{n} B"


def register(app: typer.Typer) -> None:
    """Add the `clean` verb."""

    @app.command("clean")
    def clean(
        workspace: Path = typer.Argument(..., help="Workspace folder."),
        states: bool = typer.Option(
            False, "--states", help="States no stage needs (default when no kind is given)."
        ),
        cache: bool = typer.Option(
            False, "--cache", help="Latent caches of VAEs the recipe no longer uses."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Only print what would be removed, and its size."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Remove stale states, unused latent caches and killed writes' temporaries.

        Never the final state of a completed stage, never the state a stage resumes from,
        never a file tagtune did not write. Stale temporaries always go.

        Example: tagtune clean WS --states --cache --dry-run
        """
        from tagtune.train.clean import clean_workspace

        ws = open_workspace(workspace)
        report = clean_workspace(ws, states=states or not cache, cache=cache, dry_run=dry_run)
        if as_json:
            print_json(report.to_json())
            return
        verb = "would remove" if dry_run else "removed"
        for r in report.removals:
            console.print(
                f"{verb} {r.kind} {r.path} ({_size(r.bytes)}): {r.reason}", soft_wrap=True
            )
        for note in report.kept:
            console.print(note, soft_wrap=True, style="dim")
        console.print(f"{verb} {len(report.removals)} entries, {_size(report.bytes)}")
