"""`tagtune extract-lora` and `tagtune merge-lora`: LoRA files from and into checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from tagtune.cli.common import console, print_json


def _error_table(result) -> Table:
    table = Table(title="how much of the difference each rank keeps")
    for column in ("group", "modules", "unchanged", "rank", "relative error", "kept"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for row in [*result.groups, result.overall]:
        data = row.to_json()
        table.add_row(
            row.group,
            str(data["modules"]),
            str(data["unchanged"]),
            data["rank"],
            f"{data['relative_error']:.6f}",
            f"{100 * data['kept']:.2f}%",
        )
    return table


def register(app: typer.Typer) -> None:
    """Add `extract-lora` and `merge-lora` to the app."""

    @app.command("extract-lora")
    def extract_lora_cmd(
        tuned: Path = typer.Argument(..., help="The fine-tuned checkpoint (.safetensors)."),
        base: Path = typer.Argument(..., help="The checkpoint it was tuned from."),
        out: Path = typer.Option(..., "--out", help="The LoRA file to write."),
        rank: int | None = typer.Option(None, "--rank", help="Rank of every module (default 32)."),
        rank_for: list[str] | None = typer.Option(
            None,
            "--rank-for",
            help="PATTERN=R: rank for modules whose kohya name matches the glob.",
        ),
        conv_rank: int | None = typer.Option(
            None, "--conv-rank", help="Rank of the convolutions (LoCon); default: none."
        ),
        dtype: str | None = typer.Option(None, "--dtype", help="fp16 (default), bf16 or fp32."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output."),
        no_parent_hashes: bool = typer.Option(
            False, "--no-parent-hashes", help="Skip hashing the parents (faster)."
        ),
        exact_svd: bool = typer.Option(
            False, "--exact-svd", help="Full SVD even for small ranks (slower; default randomized)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Extract TUNED - BASE as a kohya LoRA by truncated SVD per module.

        Example: tagtune extract-lora tuned.safetensors base.safetensors --rank 32 --out my.safetensors
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        from tagtune.merge.lora_extract import extract_lora, parse_rank_for

        with Progress(
            "extracting",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=as_json,
            transient=True,
        ) as bar:
            task = bar.add_task("extract", total=None)
            result = extract_lora(
                tuned,
                base,
                out,
                rank=rank,
                rank_for=parse_rank_for(rank_for or []),
                conv_rank=conv_rank,
                dtype=dtype,
                force=force,
                hash_parents=not no_parent_hashes,
                exact=exact_svd,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        if as_json:
            print_json(result.to_json())
            return
        console.print(_error_table(result))
        if result.other_changed:
            console.print(
                f"{len(result.other_changed)} other tensors differ and are not in the LoRA "
                f"(no LoRA module holds them), first: {result.other_changed[0]}"
            )
        console.print(
            Text.assemble("wrote ", (str(result.path), "bold"), f" ({result.seconds:.1f} s)")
        )

    @app.command("merge-lora")
    def merge_lora_cmd(
        checkpoint: Path = typer.Argument(..., help="The checkpoint (.safetensors, single file)."),
        loras: list[str] = typer.Argument(..., help="LoRA files, each FILE or FILE:STRENGTH."),
        out: Path = typer.Option(..., "--out", help="The checkpoint to write."),
        dtype: str | None = typer.Option(
            None, "--dtype", help="fp16, bf16 or fp32 (default: the checkpoint's)."
        ),
        force: bool = typer.Option(False, "--force", help="Replace an existing output."),
        no_parent_hashes: bool = typer.Option(
            False, "--no-parent-hashes", help="Skip hashing the parents (faster)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Bake one or more kohya LoRAs into a checkpoint, streaming.

        Example: tagtune merge-lora base.safetensors style.safetensors:0.8 --out merged.safetensors
        """
        from tagtune.merge.lora_merge import merge_loras
        from tagtune.models.lora_format import parse_lora_ref

        result = merge_loras(
            checkpoint,
            [parse_lora_ref(text) for text in loras],
            out,
            dtype=dtype,
            force=force,
            hash_parents=not no_parent_hashes,
        )
        if as_json:
            print_json(result.to_json())
            return
        console.print(
            Text.assemble("wrote ", (str(result.path), "bold"), f" ({result.seconds:.1f} s)")
        )
        console.print(
            f"{result.modules} LoRA modules changed {result.changed} of {result.tensors} tensors"
        )
        for lora in result.parents["loras"]:
            console.print(f"  {lora['file']} x {lora['strength']:g}  {lora.get('autov2', '')}")
