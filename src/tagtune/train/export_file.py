"""One trained model as one SDXL single file with tagtune's metadata (export and sample grids).

The header carries ModelSpec metadata plus `tagtune.recipe` (the recipe as JSON),
`tagtune.training` (stages, steps, epochs, images) and `tagtune.tag_frequency` (top caption
tags with counts). Both the final export (`train.export`) and the per-epoch sample step
(`train.sampling`) write through `export_components`; it lives apart from the export so that
the sampling step, which training calls, does not depend on the export, which loads training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tagtune.core.catalog import open_catalog
from tagtune.core.workspace import Workspace
from tagtune.models.modelspec import modelspec_metadata
from tagtune.models.prediction import components_prediction
from tagtune.models.recipe_model import vae_source_of
from tagtune.models.save import save_single_file
from tagtune.recipe.model import Recipe
from tagtune.train import records as rec

TOP_TAGS = 100


def tag_frequency(ws: Workspace, top: int = TOP_TAGS) -> dict[str, int]:
    """The most frequent caption tags of the workspace with their counts (for the header)."""

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
         "method": s["settings"].get("method", "full"), "lr_unet": s["settings"]["lr_unet"],
         "lr_text_encoder": s["settings"]["lr_text_encoder"],
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
    date: str | None = None,
) -> Path:
    """Write the components as one SDXL single file with ModelSpec + tagtune metadata
    (`tagtune.baked_vae*` name the recipe's VAE when one was baked in); a v-prediction
    model carries the `v_pred` / `ztsnr` markers (`save_single_file`).

    `date` is `modelspec.date` (the final export passes the stage's `finished_at`, so the
    same run exports to the same bytes); None means now (the per-epoch sample files)."""
    meta = modelspec_metadata(
        recipe.project.name,
        author=recipe.project.author,
        description=recipe.project.description,
        license=recipe.project.license,
        resolution="{}x{}".format(*recipe.export.resolution),
        prediction_type=components_prediction(components).modelspec_value,
        date=date,
        extra={
            "tagtune.recipe": json.dumps(recipe.model_dump(mode="json"), sort_keys=True),
            **vae_source_of(components).metadata(),
            **(extra or {}),
        },
    )
    return Path(save_single_file(components, out, dtype=dtype, metadata=meta))
