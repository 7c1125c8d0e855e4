"""Final single-file export: the recipe's model + every finished stage's weights -> one SDXL
safetensors, carrying the recipe's VAE (`model.vae`) when one is set.

The header carries ModelSpec metadata plus `tagtune.recipe` (the recipe as JSON),
`tagtune.training` (stages, steps, epochs, images) and `tagtune.tag_frequency` (top caption
tags with counts). The file's hashes go into run.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagtune.errors import TrainingError
from tagtune.outputs import claim_output
from tagtune.recipe import Recipe
from tagtune.train import records as rec
from tagtune.workspace import Workspace

TOP_TAGS = 100


@dataclass
class ExportResult:
    """Where the export went, from which stage, and its hashes."""

    path: Path
    stage: str
    hashes: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary for the CLI."""
        return {"path": str(self.path), "stage": self.stage, "hashes": self.hashes}


def tag_frequency(ws: Workspace, top: int = TOP_TAGS) -> dict[str, int]:
    """The most frequent caption tags of the workspace with their counts (for the header)."""
    from tagtune.catalog import open_catalog

    if not ws.catalog_path.exists():
        return {}
    with open_catalog(ws.catalog_path, read_only=True) as con:
        rows = con.execute(
            "SELECT tag, count(*) AS n FROM (SELECT unnest(c.tags) AS tag FROM captions c "
            "JOIN posts ON posts.id = c.post_id WHERE posts.excluded IS NULL) "
            "GROUP BY tag ORDER BY n DESC, tag LIMIT ?",
            [top],
        ).fetchall()
    return {t: int(n) for t, n in rows}


def training_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The `tagtune.training` header value: per-stage settings and totals."""
    keep = ("name", "subset", "images", "epochs", "steps", "batch_size", "repeats")
    stages = [
        {**{k: s[k] for k in keep}, "optimizer": s["settings"]["optimizer"],
         "lr_unet": s["settings"]["lr_unet"], "lr_text_encoder": s["settings"]["lr_text_encoder"],
         "lr_text_encoder_2": s["settings"]["lr_text_encoder_2"]}
        for s in record["stages"] if s["status"] == "complete"
    ]  # fmt: skip
    return {"stages": stages, **rec.totals(record)}


def model_inputs(ws: Workspace, recipe: Recipe) -> list[tuple[str, Path | None]]:
    """The recipe's model files (base, VAE, tokenizers): an export must never replace them."""
    model = recipe.model
    return [
        (f"the {what} (model.{key})", ws.resolve(value) if value else None)
        for key, what, value in (
            ("base", "base model", model.base),
            ("vae", "VAE", model.vae),
            ("tokenizers", "tokenizers folder", model.tokenizers),
        )
    ]


def export_components(
    components: Any,
    out: Path,
    recipe: Recipe,
    dtype: str = "fp16",
    extra: dict[str, str] | None = None,
) -> Path:
    """Write the components as one SDXL single file with ModelSpec + tagtune metadata
    (`tagtune.baked_vae*` name the recipe's VAE when one was baked in)."""
    from tagtune.models.modelspec import modelspec_metadata
    from tagtune.models.recipe_model import vae_source_of
    from tagtune.models.save import save_single_file

    meta = modelspec_metadata(
        recipe.project.name,
        author=recipe.project.author,
        description=recipe.project.description,
        license=recipe.project.license,
        resolution="{}x{}".format(*recipe.export.resolution),
        prediction_type=recipe.model.prediction_type,
        extra={
            "tagtune.recipe": json.dumps(recipe.model_dump(mode="json")),
            **vae_source_of(components).metadata(),
            **(extra or {}),
        },
    )
    return Path(save_single_file(components, out, dtype=dtype, metadata=meta))


def export_model(
    ws: Workspace,
    run: str | None = None,
    stage: str | None = None,
    out: Path | None = None,
    dtype: str | None = None,
    components: Any = None,
    force: bool = False,
    ema: bool = False,
) -> ExportResult:
    """Export the run's last completed stage (or `stage`) to `WS/out/<project.name>.safetensors`.

    With `ema` the stage's modules hold its EMA averages instead of its final weights
    (default file `<project.name>-ema.safetensors`); a stage trained without EMA is a
    TrainingError.

    Every stage up to it must still have its final state (a TrainingError names the stage and
    the folder otherwise: never the base weights in their place). An existing output is
    replaced only with `force`; the base model and the other inputs never are. The model is
    the recipe's (`load_recipe_model`: `model.vae` baked in), so the file carries the VAE the
    latents were made with; run.json's export record names it.
    """
    from tagtune.hashes import file_hashes
    from tagtune.models.recipe_model import vae_source_of
    from tagtune.train.ema import apply_ema_weights, check_has_ema
    from tagtune.train.stages import apply_stage_weights, final_state_path, load_base

    recipe = ws.recipe()
    run_dir = ws.runs_dir / (run or recipe.train.run)
    record = rec.read_run(run_dir)
    done = [s for s in (record or {}).get("stages", []) if s["status"] == "complete"]
    if not done:
        raise TrainingError(
            "no completed stage to export", file=run_dir, hint="run `tagtune train` first"
        )
    names = [s["name"] for s in done]
    target = stage or names[-1]
    if target not in names:
        raise TrainingError(
            "stage is not complete", field="stage", value=target, allowed=", ".join(names)
        )
    states = {s["name"]: final_state_path(ws, s) for s in done[: names.index(target) + 1]}
    if ema:  # before any slow work
        check_has_ema(states[target], target)
    default = f"{recipe.project.name}{'-ema' if ema else ''}.safetensors"
    out = Path(out) if out else ws.out_dir / default
    inputs = [
        *model_inputs(ws, recipe),
        *((f"the final state of stage {name!r}", path) for name, path in states.items()),
        ("the run record", run_dir / rec.RUN_FILE),
        *ws.inputs(),
    ]
    claim_output(out, force=force, inputs=inputs)
    components = components if components is not None else load_base(ws, recipe)
    for path in states.values():
        apply_stage_weights(components, path)
    extra = {
        "tagtune.training": json.dumps(training_summary(record)),
        "tagtune.tag_frequency": json.dumps(tag_frequency(ws)),
    }
    if ema:  # the target stage's averages replace its final weights
        modules = apply_ema_weights(components, states[target], target)
        extra["tagtune.ema"] = json.dumps({"stage": target, "modules": modules})
    path = export_components(components, out, recipe, dtype or recipe.export.dtype, extra)
    hashes = {k: v for k, v in file_hashes(path).items() if v is not None}  # as in run.json
    try:
        shown = path.resolve().relative_to(ws.root.resolve()).as_posix()
    except ValueError:
        shown = str(path)
    vae = vae_source_of(components).to_json()
    record["export"] = {"path": shown, "hashes": hashes, "vae": vae, "ema": ema}
    rec.write_run(run_dir, record)
    return ExportResult(path, target, hashes)
