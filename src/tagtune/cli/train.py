"""`tagtune train`: a thin wrapper over tagtune.train (plan, run, summary)."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.text import Text

from tagtune.cli.common import console, err_console, error_line, print_json
from tagtune.core.workspace import open_workspace
from tagtune.train.summary import summary_lines


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""

    @app.command("train")
    def train(
        workspace: Path = typer.Argument(..., help="Workspace folder."),
        stage: str = typer.Option(None, "--stage", help="Run only this stage."),
        resume: bool = typer.Option(
            False, "--resume", help="Continue from the newest complete state."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Print steps and a GPU memory estimate only."
        ),
        processes: int = typer.Option(
            None, "--processes", min=1, help="Dry run: GPUs to plan for (default: this launch's)."
        ),
        zero2: bool = typer.Option(
            None,
            "--zero2/--no-zero2",
            help="Dry run: plan for DeepSpeed ZeRO-2 (default: this launch's).",
        ),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Train the recipe's stages in order (all pending ones, or --stage NAME).

        Example: tagtune train my-ws --stage main
        """

        ws = open_workspace(workspace)
        if dry_run:
            from tagtune.train.plan import dry_run as plan
            from tagtune.train.zero import is_deepspeed_launch

            world = processes or int(os.environ.get("WORLD_SIZE", "1"))
            zero = is_deepspeed_launch() if zero2 is None else zero2
            result = plan(ws, world_size=world, zero2=zero)
            if json_out:
                print_json(result)
            else:
                _print_plan(result)
            _exit_on_problems(result["problems"])
            return
        from tagtune.train.interrupt import INTERRUPTED_EXIT_CODE, TrainingInterrupted
        from tagtune.train.stages import run_training

        try:
            summary = run_training(ws, stage=stage, resume=resume, progress=not json_out)
        except TrainingInterrupted as stop:
            if os.environ.get("RANK", "0") == "0":
                err_console.print(stop.message(), soft_wrap=True)
            raise typer.Exit(INTERRUPTED_EXIT_CODE) from None
        if os.environ.get("RANK", "0") != "0":  # under a launcher, process 0 reports
            return
        if json_out:
            print_json(summary)
            return
        for note in summary.notes:
            console.print(Text(note, style="dim"))
        _print_summary(summary)


def _images_cell(images: int, per_epoch: int) -> str:
    """Images of a stage, and the images an epoch shows when repeats make it differ."""
    return str(images) if per_epoch == images else f"{images} ({per_epoch}/epoch)"


def _exit_on_problems(problems: list[dict]) -> None:
    """One line per problem on stderr (`warning:` or `error:`); exit 2 when any is an error."""
    for p in problems:
        where = [p["file"], f"stage {p['stage']!r}" if p["stage"] else "", p["key"]]
        text = ": ".join([w for w in where if w] + [p["message"]])
        text += f" ({p['hint']})" if p.get("hint") else ""
        if p["severity"] == "error":
            err_console.print(error_line(text)[0], soft_wrap=True)
        else:
            err_console.print(Text.assemble(("warning:", "yellow"), " ", text), soft_wrap=True)
    if any(p["severity"] == "error" for p in problems):
        raise typer.Exit(2)


def _print_plan(result: dict) -> None:
    from rich.table import Table

    n = result["processes"]
    launch = f"{n} processes, {result['scheme']}" if n > 1 else result["scheme"]
    table = Table(title=f"run {result['run']}: dry run ({result['resolution']}, {launch})")
    for col in (
        "stage",
        "images",
        "epochs",
        "steps/epoch",
        "steps",
        "warm-up",
        "optimizer",
        "GPU GiB (est.)",
    ):
        table.add_column(col)
    for s in result["stages"]:
        table.add_row(
            s["name"], _images_cell(s["images"], s.get("images_per_epoch", s["images"])),
            str(s["epochs"]), str(s["steps_per_epoch"]), str(s["steps"]), str(s["warmup_steps"]),
            s["optimizer"] + (f", {s['method']}" if s.get("method", "full") != "full" else ""),
            f"{s['memory_gib_estimate']['total']:.1f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"total steps: {result['total_steps']}")
    steps_from = result["stages"][0]["steps_from"] if result["stages"] else "-"
    console.print(Text(f"{result['note']}; steps from {steps_from}", style="dim"))


def _print_summary(summary) -> None:
    from rich.table import Table

    from tagtune.train.validation import format_gap, format_loss, stage_summary, start_and_end

    table = Table(title=f"training: {summary.run_dir}")
    for col in (
        "stage", "images", "steps", "seconds", "final loss", "val loss", "gap", "final state"
    ):  # fmt: skip
        table.add_column(col)
    for s in summary.ran:
        loss = "-" if s["final_loss"] is None else f"{s['final_loss']:.4f}"
        v = start_and_end(s.get("validation"))
        first, last = v["start"] or {}, v["end"] or v["start"] or {}
        table.add_row(
            s["name"],
            str(s["images"]),
            str(s["steps"]),
            f"{s['seconds']:.1f}",
            loss,
            f"{format_loss(first.get('loss'))} -> {format_loss(last.get('loss'))}",
            f"{format_gap(first.get('conditioning_gap'))} -> "
            f"{format_gap(last.get('conditioning_gap'))}",
            s["final_state"],
        )
    console.print(table)
    for s in summary.ran:
        line = stage_summary(s)
        if line:
            console.print(line, soft_wrap=True)
    for line in summary_lines(summary.run_dir, summary.ran):
        console.print(line, soft_wrap=True)
    if summary.skipped:
        console.print(f"already complete: {', '.join(summary.skipped)}")
