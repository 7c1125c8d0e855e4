"""Final single-file export: the recipe's model + every finished stage's weights -> one SDXL
safetensors, carrying the recipe's VAE (`model.vae`) when one is set.

The file is written by `train.export_file` (header: ModelSpec + tagtune's metadata); its
hashes go into run.json. Exports are reproducible: every header value comes from the run's
own records (the date is the stage's `finished_at`, JSON values are key-sorted, no path
outside the workspace's relative names), so exporting the same stage twice gives the same
SHA-256 wherever the file goes. A LoRA export also names its file (`ss_output_name`,
`modelspec.usage_hint`), so it is the same bytes for the same file name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagtune.core.errors import InputError, TrainingError
from tagtune.core.outputs import claim_output
from tagtune.core.results import Result
from tagtune.core.workspace import Workspace
from tagtune.models.hashes import file_hashes
from tagtune.models.prediction import components_prediction
from tagtune.models.recipe_model import resolve_prediction, vae_source_of
from tagtune.recipe.workspace import workspace_recipe
from tagtune.train import records as rec
from tagtune.train import stages  # looked up at call time: tests replace stages.load_base
from tagtune.train.ema import apply_ema_weights, check_has_ema
from tagtune.train.export_file import (
    export_components,
    model_inputs,
    tag_frequency,
    training_summary,
)

DTYPES = ("fp16", "bf16", "fp32")


@dataclass
class ExportResult(Result):
    """Where the export went, from which stage, and its hashes."""

    path: Path
    stage: str
    hashes: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary for the CLI."""
        return {"path": str(self.path), "stage": self.stage, "hashes": self.hashes}


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
    the folder otherwise: never the base weights in their place). A LoRA stage exports as a
    kohya LoRA file (`tagtune.train.lora_export`, default name `<project.name>-lora`) holding
    the stage's LoRA alone. An existing output is replaced only with `force`; the base model
    and the other inputs never are. The model is
    the recipe's (`load_recipe_model`: `model.vae` baked in), so the file carries the VAE the
    latents were made with; run.json's export record names it.
    """
    if dtype is not None and dtype not in DTYPES:
        raise InputError(
            "not an allowed dtype", field="dtype", value=dtype, allowed=", ".join(DTYPES)
        )
    recipe = workspace_recipe(ws)
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
    states = {s["name"]: stages.final_state_path(ws, s) for s in done[: names.index(target) + 1]}
    entry = done[names.index(target)]
    lora = entry.get("settings", {}).get("method") == "lora"  # a kohya LoRA file instead
    if ema:  # before any slow work
        check_has_ema(states[target], target)
    stem = recipe.project.name + ("-lora" if lora else "") + ("-ema" if ema else "")
    out = Path(out) if out else ws.out_dir / f"{stem}.safetensors"
    inputs = [
        *model_inputs(ws, recipe),
        *((f"the final state of stage {name!r}", path) for name, path in states.items()),
        ("the run record", run_dir / rec.RUN_FILE),
        *ws.inputs(),
    ]
    claim_output(out, force=force, inputs=inputs)
    if lora:
        from tagtune.train.lora_export import export_lora

        path, info = export_lora(
            ws, recipe, record, entry, states[target], out, dtype or recipe.export.dtype,
            earlier=names[: names.index(target)],
        )  # fmt: skip
        return _record_export(ws, run_dir, record, path, target, {"lora": info})
    components = components if components is not None else stages.load_base(ws, recipe)
    resolve_prediction(components, recipe, str(ws.recipe_path))  # as load_base does
    for path in states.values():
        stages.apply_stage_weights(components, path)
    extra = {
        "tagtune.training": json.dumps(training_summary(record), sort_keys=True),
        "tagtune.tag_frequency": json.dumps(tag_frequency(ws)),
    }
    if ema:  # the target stage's averages replace its final weights
        modules = apply_ema_weights(components, states[target], target)
        extra["tagtune.ema"] = json.dumps({"stage": target, "modules": modules})
    path = export_components(
        components, out, recipe, dtype or recipe.export.dtype, extra, date=export_date(entry)
    )
    extra_record: dict[str, Any] = {"vae": vae_source_of(components).to_json(), "ema": ema}
    prediction = components_prediction(components)
    if prediction.is_v:  # an epsilon record stays as it was
        extra_record["prediction"] = prediction.to_json()
    return _record_export(ws, run_dir, record, path, target, extra_record)


def export_date(entry: dict[str, Any]) -> str:
    """The exported file's `modelspec.date`: when the stage finished (its run.json entry), so
    exporting the same stage again, anywhere, gives the same bytes. An entry written before
    `finished_at` existed gives "" (the key is left out), never the wall clock."""
    return str(entry.get("finished_at") or "")


def _record_export(
    ws: Workspace,
    run_dir: Path,
    record: dict[str, Any],
    path: Path,
    stage: str,
    extra: dict[str, Any],
) -> ExportResult:
    """Hash the exported file and record it in run.json (path, hashes, VAE or LoRA)."""
    hashes = {k: v for k, v in file_hashes(path).items() if v is not None}  # as in run.json
    try:
        shown = path.resolve().relative_to(ws.root.resolve()).as_posix()
    except ValueError:
        shown = str(path)
    record["export"] = {"path": shown, "hashes": hashes, **extra}
    rec.write_run(run_dir, record)
    return ExportResult(path, stage, hashes)
