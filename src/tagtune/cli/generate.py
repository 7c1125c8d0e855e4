"""`tagtune generate`: txt2img with A1111 prompts and infotext; `--from-png` re-runs an image."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from tagtune.cli.common import console, print_json
from tagtune.core.errors import InputError
from tagtune.core.progress import Progress
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
        cfg_rescale: float | None = typer.Option(
            None, "--cfg-rescale", help="Guidance rescale phi, 0 to 1 (default 0; ~0.7 for v-pred)."
        ),
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
        lora: list[str] | None = typer.Option(
            None,
            "--lora",
            help="A kohya LoRA applied in memory: FILE or FILE:STRENGTH (repeatable).",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Generate images; each PNG carries A1111 infotext (Model hash = AutoV2).

        Example: tagtune generate model.safetensors "1girl, red hair" -n 2 --seed 1
        """
        from tagtune.generate.defaults import generation_defaults
        from tagtune.generate.pipeline import generate as run_generate
        from tagtune.generate.pipeline import params_from_png
        from tagtune.models.lora_format import parse_lora_ref

        if from_png is None and prompt is None:
            raise InputError("a PROMPT is needed (or --from-png FILE)", field="PROMPT")
        given = {
            "prompt": prompt,
            "negative": negative,
            "steps": steps,
            "cfg": cfg,
            "cfg_rescale": cfg_rescale,
            "sampler": sampler,
            "seed": seed,
            "size": size,
            "n": n,
            "clip_skip": clip_skip,
            "out_dir": out,
            "tokenizers": tokenizers,
        }
        base = generation_defaults(ckpt, workspace)  # size, steps, negative, out_dir
        params = {**base, **(params_from_png(from_png, loras_given=bool(lora)) if from_png else {})}
        params.update({k: v for k, v in given.items() if v is not None})
        with Progress(enabled=not as_json, unit="steps") as bar:
            task = bar.add_task("sampler steps", total=None)
            paths = run_generate(
                ckpt,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                loras=[parse_lora_ref(text) for text in lora or []],
                **params,
            )
        if as_json:
            seeds = [read_png_infotext(p).seed for p in paths]
            used = {**params_from_png(paths[0], loras_given=True), "n": len(paths)} if paths else {}
            print_json({"images": [str(p) for p in paths], "seeds": seeds, "params": used})
            return
        folder = paths[0].parent if paths else out
        console.print(Text.assemble(f"wrote {len(paths)} image(s) to ", (str(folder), "bold")))
        for p in paths:
            console.print(f"  {p}")
