"""`tagtune generate`: txt2img with A1111 prompts and infotext; `--from-png` re-runs an image."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from tagtune.cli.common import console, print_json
from tagtune.core.errors import InputError
from tagtune.generate.infotext import read_png_infotext


def register(app: typer.Typer) -> None:
    """Add `generate` to the app."""

    @app.command()
    def generate(
        ckpt: Path = typer.Argument(..., help="Single-file .safetensors or diffusers folder."),
        prompt: str | None = typer.Argument(None, help="Prompt; A1111 emphasis (tag:1.2) works."),
        negative: str | None = typer.Option(
            None, "--negative", help='Negative prompt (default "worst quality").'
        ),
        steps: int | None = typer.Option(
            None, "--steps", help="Sampler steps (default: the recipe's sample_steps, else 28)."
        ),
        cfg: float | None = typer.Option(None, "--cfg", help="CFG scale (default 7)."),
        sampler: str | None = typer.Option(
            None, "--sampler", help="euler_a, euler, dpmpp_2m, ... (default euler_a)."
        ),
        seed: int | None = typer.Option(
            None, "--seed", help="Seed of the first image (random if unset)."
        ),
        size: str | None = typer.Option(
            None,
            "--size",
            help="WIDTHxHEIGHT, multiples of 8 up to 4096 (default: the model's or recipe's size).",
        ),
        n: int | None = typer.Option(
            None, "-n", help="Images, seeds seed, seed+1, ... (default 4; 1 with --from-png)."
        ),
        clip_skip: int | None = typer.Option(
            None, "--clip-skip", help="A1111 numbering; 1 = SDXL default, at most 12."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Folder for the PNGs (default WS/out/generated or outputs/)."
        ),
        workspace: Path | None = typer.Option(
            None, "--workspace", help="Take size, steps and negative from this workspace's recipe."
        ),
        from_png: Path | None = typer.Option(
            None, "--from-png", help="Re-run the parameters of this image."
        ),
        tokenizers: Path | None = typer.Option(
            None, "--tokenizers", help="Folder with tokenizer/ and tokenizer_2/."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Generate images; each PNG carries A1111 infotext (Model hash = AutoV2)."""
        from rich.progress import Progress

        from tagtune.generate.defaults import generation_defaults
        from tagtune.generate.pipeline import generate as run_generate
        from tagtune.generate.pipeline import params_from_png

        base = generation_defaults(ckpt, workspace)
        out = out or base.pop("out_dir")
        base.pop("out_dir", None)
        if from_png is not None:
            base.update(params_from_png(from_png))
        elif prompt is None:
            raise InputError("a PROMPT is needed (or --from-png FILE)", field="PROMPT")
        given = {
            "prompt": prompt,
            "negative": negative,
            "steps": steps,
            "cfg": cfg,
            "sampler": sampler,
            "seed": seed,
            "size": size,
            "clip_skip": clip_skip,
        }
        n = n if n is not None else (1 if from_png is not None else 4)
        params = {**base, **{k: v for k, v in given.items() if v is not None}}
        with Progress(console=console, disable=as_json, transient=True) as bar:
            task = bar.add_task("sampler steps", total=None)
            paths = run_generate(
                ckpt,
                n=n,
                out_dir=out,
                tokenizers=tokenizers,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                **params,
            )
        if as_json:
            seeds = [read_png_infotext(p).seed for p in paths]
            print_json({"images": [str(p) for p in paths], "seeds": seeds, "params": params})
            return
        console.print(Text.assemble(f"wrote {len(paths)} image(s) to ", (str(out), "bold")))
        for p in paths:
            console.print(f"  {p}")
