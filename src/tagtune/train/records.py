"""`runs/<run>/run.json`: what a run did, per stage, for resume decisions and the model card.

Shape (read by the model-card writer; keep it stable):
{"run", "tagtune_version", "created_at", "updated_at", "recipe", "base_model": {path, sha256, autov2},
 "vae": {path ("" = the base's own), name, sha256, autov2, fingerprint},
 "stages": [{name, status, subset, images, repeats, epochs, batch_size, gradient_accumulation,
   steps_per_epoch, steps, warmup_steps, started_at, finished_at, seconds, final_loss, settings,
   inputs: {captions_sha256, latents_vae}, final_state, resumes: [{step, at}] (absent: never),
   validation: {images, post_ids, evaluations: [{step, epoch, loss, loss_wrong_caption,
     conditioning_gap, seconds}]}}],
 "totals": {epochs, steps, images, seconds}, "export": {path, hashes, vae}}
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from tagtune.core.atomic import write_text_atomic
from tagtune.recipe.model import Recipe, StageConfig

RUN_FILE = "run.json"


def now() -> str:
    """Current UTC time as ISO 8601 (seconds)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def tagtune_version() -> str:
    """The installed tagtune version."""
    try:
        from importlib.metadata import version

        return version("tagtune")
    except Exception:
        return "0.1.0"


def read_run(run_dir: Path) -> dict[str, Any] | None:
    """The run record, or None when the run has none yet."""
    path = Path(run_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def new_run(
    run: str, recipe: Recipe, base_model: dict[str, str], vae: dict[str, str] | None = None
) -> dict[str, Any]:
    """A fresh run record with no stages yet; `vae` names the VAE the latents come from."""
    stamp = now()
    return {
        "run": run,
        "tagtune_version": tagtune_version(),
        "created_at": stamp,
        "updated_at": stamp,
        "recipe": recipe.model_dump(mode="json"),
        "base_model": base_model,
        "vae": vae,
        "stages": [],
        "totals": {"epochs": 0, "steps": 0, "images": 0, "seconds": 0.0},
        "export": None,
    }


def stage_record(
    stage: StageConfig,
    *,
    images: int,
    steps_per_epoch: int,
    warmup_steps: int,
    captions_sha256: str,
    latents_vae: str,
) -> dict[str, Any]:
    """A stage entry in the 'running' state."""
    return {
        "name": stage.name,
        "status": "running",
        "subset": stage.subset,
        "images": images,
        "repeats": stage.repeats,
        "epochs": stage.epochs,
        "batch_size": stage.batch_size,
        "gradient_accumulation": stage.gradient_accumulation,
        "steps_per_epoch": steps_per_epoch,
        "steps": steps_per_epoch * stage.epochs,
        "warmup_steps": warmup_steps,
        "started_at": now(),
        "finished_at": None,
        "seconds": 0.0,
        "final_loss": None,
        "settings": stage.model_dump(mode="json"),
        "inputs": {"captions_sha256": captions_sha256, "latents_vae": latents_vae},
        "final_state": None,
    }


KEPT_ON_RESUME = ("started_at", "seconds", "resumes")
"""Fields of a stage entry that a resumed run carries over instead of starting afresh."""


def add_resume(entry: dict[str, Any], step: int) -> None:
    """Note in a stage entry that training resumed from the state at `step` (and when), so
    the report can mark it on the curves."""
    entry.setdefault("resumes", []).append({"step": int(step), "at": now()})


def find_stage(record: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The stage entry called `name`, if any."""
    return next((s for s in record["stages"] if s["name"] == name), None)


def put_stage(record: dict[str, Any], entry: dict[str, Any], order: list[str]) -> None:
    """Insert or replace a stage entry, keeping the recipe's stage order."""
    others = [s for s in record["stages"] if s["name"] != entry["name"]]
    record["stages"] = sorted(
        [*others, entry], key=lambda s: order.index(s["name"]) if s["name"] in order else 1 << 30
    )


def totals(record: dict[str, Any]) -> dict[str, Any]:
    """Totals over complete stages: epochs, steps, distinct images (max over stages), seconds."""
    done = [s for s in record["stages"] if s["status"] == "complete"]
    return {
        "epochs": sum(s["epochs"] for s in done),
        "steps": sum(s["steps"] for s in done),
        "images": max((s["images"] for s in done), default=0),
        "seconds": round(sum(s["seconds"] for s in done), 3),
    }


def write_run(run_dir: Path, record: dict[str, Any]) -> Path:
    """Write run.json atomically, refreshing updated_at and totals."""
    record["updated_at"] = now()
    record["totals"] = totals(record)
    path = Path(run_dir) / RUN_FILE
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return path
