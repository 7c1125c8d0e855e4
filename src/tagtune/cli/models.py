"""Model file commands: `convert`, `bake-vae`, `hash`, `tiny-model`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from tagtune.cli.common import console, err_console, one_line, print_json
from tagtune.core.errors import TagtuneError
from tagtune.models.hashes import file_hashes

DTYPE_HELP = "Tensor precision of the output: fp16, bf16 or fp32."


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _written(result, as_json: bool, title: str) -> None:
    data = {
        "path": str(result.path),
        "format": result.format,
        "dtype": result.dtype,
        "tensors": result.tensors,
        "bytes": result.bytes,
    }
    if as_json:
        print_json(data)
        return
    console.print(
        Text.assemble(
            f"{title} ",
            (str(result.path), "bold"),
            f" ({result.format}, {result.dtype}, {result.tensors} tensors, {_human(result.bytes)})",
        ),
        soft_wrap=True,
    )


def _hash_all(files: list[Path]) -> dict[str, dict]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    results: dict[str, dict] = {}
    with Progress(
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,  # no stray blank line before an error
    ) as bar:
        for f in files:
            size = f.stat().st_size if f.is_file() else 0
            task = bar.add_task(f.name, total=size)
            try:
                results[str(f)] = file_hashes(
                    f, progress=lambda n, t=task: bar.update(t, completed=n)
                )
            except TagtuneError as exc:  # one bad file never stops the others
                results[str(f)] = {"error": exc.message()}
            bar.remove_task(task)
    return results


def register(app: typer.Typer) -> None:
    """Add `convert`, `bake-vae`, `hash` and `tiny-model` to the app."""

    @app.command()
    def convert(
        src: Path = typer.Argument(..., help="A diffusers folder or a single-file checkpoint."),
        dst: Path = typer.Argument(..., help="Output: a single file (from a folder) or a folder."),
        dtype: str = typer.Option("fp16", "--dtype", help=DTYPE_HELP),
        tokenizers: Path | None = typer.Option(
            None, "--tokenizers", help="Folder with tokenizer/ and tokenizer_2/ (for single files)."
        ),
        force: bool = typer.Option(
            False, "--force", help="Replace an existing output (never SRC)."
        ),
        title: str = typer.Option("", "--title", help="ModelSpec title (default: output name)."),
        author: str = typer.Option("", "--author", help="ModelSpec author."),
        license: str = typer.Option("", "--license", help="ModelSpec licence name."),
        description: str = typer.Option("", "--description", help="ModelSpec description."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Convert a diffusers folder to an SDXL single file (ModelSpec metadata) and back."""
        from tagtune.models.convert import convert_model

        result = convert_model(
            src, dst, dtype=dtype, tokenizers=tokenizers, overwrite=force,
            title=title, author=author, license=license, description=description,
        )  # fmt: skip
        _written(result, as_json, "wrote")

    @app.command("bake-vae")
    def bake_vae_cmd(
        ckpt: Path = typer.Argument(..., help="Single-file SDXL checkpoint."),
        vae: Path = typer.Argument(..., help="VAE: single file (LDM or diffusers keys) or folder."),
        out: Path = typer.Argument(..., help="Output checkpoint (a new file; never CKPT itself)."),
        force: bool = typer.Option(
            False, "--force", help="Replace an existing output (never CKPT or VAE)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Write CKPT with every first_stage_model.* tensor replaced by the tensors of VAE."""
        from tagtune.models.vae_bake import bake_vae

        r = bake_vae(ckpt, vae, out, force=force)
        if as_json:
            print_json(
                {"path": str(r.path), "vae": r.vae, "replaced": r.replaced, "changed": r.changed}
            )
            return
        console.print(
            Text.assemble(
                "wrote ",
                (str(r.path), "bold"),
                f": {r.replaced} VAE tensors replaced from {r.vae} ({r.changed} changed value)",
            ),
            soft_wrap=True,
        )

    @app.command("hash")
    def hash_cmd(
        files: list[Path] = typer.Argument(..., help="Files to hash."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """SHA-256, AutoV1, AutoV2, AutoV3, CRC32 and BLAKE3 of each file, in one read pass."""
        results = _hash_all(files)
        if as_json:
            print_json(results)
        else:
            for name, h in results.items():
                console.print(Text(name, style="bold"), soft_wrap=True)
                if "error" in h:
                    err_console.print(
                        Text.assemble("  ", ("error:", "red"), " ", one_line(h["error"])),
                        soft_wrap=True,
                    )
                    continue
                for key, value in h.items():
                    console.print(f"  {key:<7} {value if value is not None else '-'}")
        if any("error" in h for h in results.values()):
            raise typer.Exit(code=1)

    @app.command("tiny-model")
    def tiny_model(
        out: Path = typer.Argument(..., help="Output file (single-file) or folder (diffusers)."),
        fmt: str = typer.Option("single-file", "--format", help="single-file or diffusers."),
        seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
        dtype: str = typer.Option("fp16", "--dtype", help=DTYPE_HELP),
        force: bool = typer.Option(False, "--force", help="Replace an existing output."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Write a tiny random SDXL model (full architecture, small widths) for tests and demos."""
        from tagtune.models.convert import write_tiny_model

        result = write_tiny_model(out, fmt=fmt, seed=seed, dtype=dtype, overwrite=force)
        _written(result, as_json, "wrote tiny model")
