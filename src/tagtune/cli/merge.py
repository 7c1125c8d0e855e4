"""`tagtune merge`: weighted-sum / add-difference merges, per-block weights, streaming."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from tagtune.cli.common import console, print_json
from tagtune.merge.blocks import parse_blocks


def register(app: typer.Typer) -> None:
    """Add `merge` to the app."""

    @app.command()
    def merge(
        a: Path = typer.Argument(..., help="Checkpoint A (.safetensors, original SDXL layout)."),
        b: Path = typer.Argument(..., help="Checkpoint B."),
        c: Path | None = typer.Argument(None, help="Checkpoint C (add-difference only)."),
        mode: str = typer.Option("weighted-sum", "--mode", help="weighted-sum or add-difference."),
        alpha: float | None = typer.Option(
            None, "--alpha", help="Weight of B (or of B - C); default 0.3."
        ),
        blocks: str | None = typer.Option(
            None, "--blocks", help="20 weights: BASE,IN00..IN08,M00,OUT00..OUT08 (supermerger)."
        ),
        text_encoder_alpha: float | None = typer.Option(
            None, "--text-encoder-alpha", help="Weight for both text encoders (default: BASE)."
        ),
        vae: str | None = typer.Option(None, "--vae", help="Copy the VAE of parent a or b."),
        out: Path | None = typer.Option(
            None, "--out", help="Output file (default: A+B.safetensors)."
        ),
        dtype: str | None = typer.Option(
            None, "--dtype", help="fp16, bf16 or fp32 (default: A's)."
        ),
        force: bool = typer.Option(
            False, "--force", help="Replace an existing output (never a parent)."
        ),
        no_parent_hashes: bool = typer.Option(
            False, "--no-parent-hashes", help="Skip the parents' AutoV2 in the metadata (faster)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Merge checkpoints tensor by tensor: (1-alpha)A + alpha B, or A + alpha(B - C)."""
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        from tagtune.merge.checkpoints import MergeSpec, merge_checkpoints

        spec = MergeSpec(
            mode=mode,
            alpha=alpha,
            blocks=parse_blocks(blocks) if blocks is not None else None,
            text_encoder_alpha=text_encoder_alpha,
            vae=vae,
            dtype=dtype,
        )
        target = out or Path(f"{a.stem}+{b.stem}.safetensors")
        with Progress(
            "merging",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=as_json,
            transient=True,
        ) as bar:
            task = bar.add_task("merge", total=None)
            result = merge_checkpoints(
                a,
                b,
                target,
                spec,
                c=c,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                hash_parents=not no_parent_hashes,
                force=force,
            )
        if as_json:
            print_json(
                {
                    "path": str(result.path),
                    "tensors": result.tensors,
                    "merged": result.merged,
                    "copied": result.copied,
                    "bytes": result.bytes,
                    "seconds": round(result.seconds, 3),
                    "parents": result.parents,
                    "recipe": spec.to_json(),
                }
            )
            return
        console.print(
            Text.assemble(
                "wrote ",
                (str(result.path), "bold"),
                f" ({result.bytes / 1e9:.2f} GB, {result.seconds:.1f} s)",
            )
        )
        console.print(
            f"{result.tensors} tensors: {result.merged} merged, {result.copied} copied from a parent"
        )
        for p in result.parents:
            console.print(f"  {p['role']}: {p['file']}  AutoV2 {p.get('autov2', '-')}")
