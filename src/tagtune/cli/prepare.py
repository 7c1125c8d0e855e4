"""`tagtune prepare WS [chart]`: aspect buckets, the step plan, the latent cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from tagtune.cli.common import console, print_json
from tagtune.core.errors import InputError
from tagtune.core.workspace import open_workspace

ACTIONS = ("chart",)


def _plan_tables(plan: Any) -> None:
    from rich.table import Table

    buckets = Table(title=f"{plan.images} images in {len(plan.bucket_counts)} buckets")
    buckets.add_column("bucket (w x h)")
    buckets.add_column("aspect", justify="right")
    buckets.add_column("images", justify="right")
    for (w, h), n in plan.bucket_counts.items():
        buckets.add_row(f"{w}x{h}", f"{w / h:.2f}", str(n))
    console.print(buckets)
    stages = Table(title="training plan")
    for col in ("stage", "images", "epochs", "steps/epoch", "total steps", "warm-up steps"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    for s in plan.stages:
        stages.add_row(
            s.name,
            str(s.images)
            if s.images_per_epoch == s.images
            else f"{s.images} ({s.images_per_epoch}/epoch)",
            str(s.epochs),
            str(s.steps_per_epoch),
            f"{s.total_steps:,}",
            f"{s.warmup_steps:,}",
        )
    stages.add_row(
        "total", "", str(plan.total_epochs), "", f"{plan.total_steps:,}", "", style="bold"
    )
    console.print(stages)


def _result_table(result: Any) -> None:
    from rich.table import Table

    t = Table(title="prepare", show_header=False)
    s = result.to_json()
    for label, key in (
        ("images planned (this process)", "planned"),
        ("already cached", "cached"),
        ("encoded now", "encoded"),
        ("latents written", "latents_written"),
        ("shards written", "shards_written"),
        ("problems (skipped)", "problems"),
        ("images/s", "images_per_s"),
        ("encoder waiting for images", "encoder_wait_share"),
        ("  after the first image", "steady_wait_share"),
        ("cache", "cache_dir"),
    ):
        value = s[key]
        if key.endswith("wait_share"):
            value = f"{value:.1%}"
        t.add_row(label, str(value))
    console.print(t)
    for p in result.problems[:10]:
        console.print(Text.assemble(("skipped", "yellow"), f" {p.path}: {p.reason}: {p.detail}"))
    if len(result.problems) > 10:
        console.print(f"... and {len(result.problems) - 10} more (see `tagtune status`)")


def register(app: typer.Typer) -> None:
    """Add `prepare` to the app."""

    @app.command()
    def prepare(
        ws: Path = typer.Argument(..., help="Workspace folder."),
        action: str | None = typer.Argument(
            None, help="`chart`: draw the bucket histogram (with --out) instead of encoding."
        ),
        plan: bool = typer.Option(
            False, "--plan", help="Print buckets and step counts only; no image is read."
        ),
        workers: int = typer.Option(
            2, "--workers", min=0, help="Processes decoding and resizing images (0: inline)."
        ),
        vae_batch: int = typer.Option(
            4, "--vae-batch", min=1, help="Images per VAE call (lower it if memory runs out)."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Chart file (PNG) for `chart`; default WS/out/buckets.png."
        ),
        force: bool = typer.Option(False, "--force", help="`chart`: replace an existing chart."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Bucket every included image and encode it into the latent cache (resumable).

        --plan prints the bucket table and each stage's steps (no image is read).
        `tagtune prepare WS chart --out buckets.png` draws the bucket histogram.

        Example: tagtune prepare my-ws --plan
        """

        if action is not None and action not in ACTIONS:
            raise InputError(
                "unknown action", field="ACTION", value=action, allowed=", ".join(ACTIONS)
            )
        w = open_workspace(ws)
        if plan or action == "chart":
            from tagtune.prepare.run import bucket_chart
            from tagtune.train.plan import prepare_plan

            p = prepare_plan(w)
            data = p.to_json()
            if action == "chart":
                chart = out or w.out_dir / "buckets.png"
                data["chart"] = str(
                    bucket_chart(p.bucket_counts, chart, force=force, inputs=w.inputs())
                )
            if json_out:
                print_json(data)
                return
            _plan_tables(p)
            if action == "chart":
                console.print(Text.assemble("chart written to ", (str(data["chart"]), "bold")))
            return
        from tagtune.prepare.run import prepare_workspace

        result = prepare_workspace(w, workers, vae_batch_size=vae_batch, show_progress=not json_out)
        if json_out:
            print_json(result)
        else:
            _result_table(result)
