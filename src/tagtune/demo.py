"""`tagtune demo`: the whole pipeline on a synthetic collection and a tiny model, on CPU.

It writes a Danbooru-style collection (small images of coloured shapes with harmless tags,
gallery-dl sidecars, a favorites list and some broken files), then runs every stage a user
runs: ingest, caption, tags suggest, prepare, train (both stages of a scaled-down reference
recipe), export, hash, model card, a sample grid and the report page. Each step is the same
library call the matching verb makes. A few images are held out: the validation loss and the
conditioning gap before and after each stage are in `DemoResult.facts["validation"]`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tagtune.captions.build import build_captions
from tagtune.card import write_card
from tagtune.core.errors import InputError
from tagtune.generate.pipeline import generate
from tagtune.ingest.driver import ingest
from tagtune.models.hashes import file_hashes
from tagtune.recipe.model import (
    BucketConfig,
    ExportConfig,
    ModelConfig,
    ProjectConfig,
    Recipe,
    StageConfig,
    TrainConfig,
)
from tagtune.recipe.validation import ValidationConfig
from tagtune.recipe.workspace import init_workspace
from tagtune.synthetic.collection import write_collection
from tagtune.train.export import export_model

DEMO_PROMPT_FALLBACK = "1girl, smile, blue sky"
DEMO_MARKER = ".tagtune-demo"


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: the README's run, or the reduced run of the test suite."""

    images: int = 160
    main_epochs: int = 2
    favorites_epochs: int = 2
    sample_steps: int = 8
    grid_images: int = 4
    held_out: int = 8


FULL = DemoSize()
REDUCED = DemoSize(
    images=24, main_epochs=1, favorites_epochs=1, sample_steps=2, grid_images=2, held_out=4
)


def demo_recipe(base: str, size: DemoSize = FULL) -> Recipe:
    """The reference recipe scaled down to a tiny model on CPU.

    Same caption rules and the same two stages (main, then favorites with frozen but uncached
    text encoders, constant schedule and noise offset 0.0357); fewer epochs, small buckets,
    AdamW instead of 8-bit AdamW (bitsandbytes needs CUDA), fp32, larger learning rates so a
    few epochs visibly move a random model, and `size.held_out` images held out for validation.
    """
    main = StageConfig(
        name="main",
        subset="all",
        epochs=size.main_epochs,
        batch_size=4,
        optimizer="adamw",
        lr_unet=1e-4,
        lr_text_encoder=2e-5,
        lr_text_encoder_2=2e-5,
        scheduler="cosine_with_restarts",
        warmup_ratio=0.1,
    )
    favorites = StageConfig(
        name="favorites",
        subset="favorites",
        epochs=size.favorites_epochs,
        batch_size=4,
        optimizer="adamw",
        lr_unet=1e-5,
        lr_text_encoder=0.0,
        lr_text_encoder_2=0.0,
        cache_text_encoder_outputs=False,
        scheduler="constant",
        noise_offset=0.0357,
    )
    return Recipe(
        project=ProjectConfig(
            name="tagtune-demo",
            author="tagtune demo",
            description="A tiny SDXL-shaped model fine-tuned on a synthetic collection.",
        ),
        model=ModelConfig(base=base),
        buckets=BucketConfig(resolution=128, min_side=64, max_side=256, step=64),
        train=TrainConfig(
            run="demo",
            mixed_precision="no",
            weight_dtype="fp32",
            gradient_checkpointing=False,
            keep_last=2,
            sample_every_n_epochs=1,  # the report shows each epoch's grid
            sample_prompts=["1girl, smile, red circle", "no humans, blue square"],
            sample_steps=size.sample_steps,
            sample_size=(128, 128),
            stages=[main, favorites],
        ),
        validation=ValidationConfig(count=size.held_out),
        export=ExportConfig(resolution=(128, 128)),
    )


@dataclass
class DemoResult:
    """Where everything the demo made lives, and how long each step took."""

    root: Path
    workspace: Path
    paths: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def run_demo(
    folder: str | Path,
    size: DemoSize = FULL,
    seed: int = 0,
    step: Callable[[str], None] | None = None,
    show_progress: bool = True,
) -> DemoResult:
    """Run the whole pipeline in `folder` (created; an earlier demo there is replaced)."""
    import shutil

    from tagtune.models.save import save_single_file
    from tagtune.models.tiny import build_tiny_sdxl
    from tagtune.prepare.run import prepare_workspace
    from tagtune.report import write_report
    from tagtune.tags.analytics import suggest_tags
    from tagtune.train.sampling import save_grid
    from tagtune.train.stages import run_training

    root = Path(folder)
    if root.exists():
        if not root.is_dir() or (any(root.iterdir()) and not (root / DEMO_MARKER).is_file()):
            raise InputError(
                "not a demo folder (it holds other files); the demo replaces only its own",
                file=root,
                hint="give an empty or new folder",
            )
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / DEMO_MARKER).write_text(
        "written by `tagtune demo`; the next demo replaces this folder\n"
    )
    result = DemoResult(root=root, workspace=root / "workspace")
    say = step or (lambda _msg: None)

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        say(name)
        t0 = time.perf_counter()
        out = fn()
        result.timings[name] = time.perf_counter() - t0
        return out

    collection = timed(
        "collection", lambda: write_collection(root / "collection", size.images, seed=seed)
    )
    result.paths["collection"] = collection["folder"]
    base = root / "base" / "tiny-sdxl.safetensors"
    timed("base model", lambda: save_single_file(build_tiny_sdxl(seed), base, dtype="fp32"))
    result.paths["base model"] = base

    ws = init_workspace(result.workspace, recipe=demo_recipe(str(base.resolve()), size))
    result.paths["recipe"] = ws.recipe_path
    summary = timed(
        "ingest",
        lambda: ingest(ws, [collection["folder"]], favorites=collection["favorites_file"]),
    )
    result.facts["ingest"] = summary
    result.paths["catalog"] = ws.catalog_path
    captions = timed("caption", lambda: build_captions(ws))
    result.facts["captions"] = captions.captions
    result.paths["captions"] = ws.captions_path
    suggestion = timed(
        "tags suggest", lambda: suggest_tags(ws, subset="favorites", n=12, min_count=3)
    )
    result.facts["recommended"] = suggestion.prompt
    prepared = timed(
        "prepare", lambda: prepare_workspace(ws, workers=2, show_progress=show_progress)
    )
    result.facts["latents"] = prepared.latents_written + prepared.cached
    trained = timed("train", lambda: run_training(ws, progress=show_progress))
    result.facts["stages"] = [s.get("name") for s in trained.ran]
    result.facts["validation"] = validation_facts(trained.ran)
    result.paths["run"] = trained.run_dir
    exported = timed("export", lambda: export_model(ws))
    result.paths["model"] = exported.path
    result.facts["hashes"] = timed("hash", lambda: file_hashes(exported.path))
    result.paths["model card"] = timed("card", lambda: write_card(ws))

    prompt = suggestion.prompt or DEMO_PROMPT_FALLBACK
    samples = root / "samples"
    images = timed(
        "generate",
        lambda: generate(
            exported.path,
            prompt,
            negative="worst quality",
            steps=size.sample_steps,
            cfg=5.0,
            sampler="euler_a",
            seed=seed,
            size=(128, 128),
            n=size.grid_images,
            out_dir=samples,
        ),
    )
    from PIL import Image

    grid = save_grid([Image.open(p) for p in images], samples / "grid.png")
    result.paths["samples"] = samples
    result.paths["grid"] = grid
    result.paths["report"] = timed("report", lambda: write_report(ws).path)
    return result


def validation_facts(ran: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage: held-out images, and loss, wrong-caption loss and gap before and after it."""
    from tagtune.train.validation import start_and_end

    keys = ("loss", "loss_wrong_caption", "conditioning_gap")
    facts = {}
    for stage in ran:
        v = start_and_end(stage.get("validation"))
        before, after = v["start"] or {}, v["end"] or v["start"] or {}
        facts[stage["name"]] = {
            "images": v["images"],
            "before": {k: before.get(k) for k in keys},
            "after": {k: after.get(k) for k in keys},
            "seconds": v["seconds"],
        }
    return facts
