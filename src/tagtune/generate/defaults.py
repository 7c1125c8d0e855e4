"""Defaults of `tagtune generate`, from the model and the workspace rather than fixed values.

- size: with a workspace, its recipe's sample size (`train.sample_size`, what training samples
  at); else the model's own: the U-Net config a single file carries (a tiny model's
  `sample_size` x 8), else its ModelSpec `modelspec.resolution`, else a diffusers folder's
  `unet/config.json` sample_size x 8, else SDXL's 1024x1024.
- steps and negative prompt: the recipe's sample settings when a workspace is given.
- output folder: `WS/out/generated/` with a workspace, else `outputs/` in the current folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tagtune.core.errors import TagtuneError
from tagtune.core.workspace import open_workspace
from tagtune.recipe.workspace import workspace_recipe

GENERAL: dict[str, Any] = {
    "negative": "worst quality",
    "steps": 28,
    "cfg": 7.0,
    "sampler": "euler_a",
    "seed": None,
    "clip_skip": 1,
}
SDXL_SIZE = (1024, 1024)
LATENT_FACTOR = 8


def _size(text: str) -> tuple[int, int] | None:
    parts = text.lower().split("x")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def model_size(model: str | Path) -> tuple[int, int]:
    """The native (width, height) of a checkpoint (single file or diffusers folder)."""
    path = Path(model)
    if path.is_dir():
        config = path / "unet" / "config.json"
        try:
            side = int(json.loads(config.read_text(encoding="utf-8"))["sample_size"])
            return side * LATENT_FACTOR, side * LATENT_FACTOR
        except (OSError, ValueError, KeyError, TypeError):
            return SDXL_SIZE
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return SDXL_SIZE
    from tagtune.models.load import METADATA_KEY, file_configs
    from tagtune.models.safetensors_io import read_header

    try:
        meta = read_header(path).metadata
    except TagtuneError:  # loading the model reports what is wrong with the file
        return SDXL_SIZE
    if METADATA_KEY in meta:
        side = int(file_configs(path)["unet"]["sample_size"])
        return side * LATENT_FACTOR, side * LATENT_FACTOR
    return _size(meta.get("modelspec.resolution", "")) or SDXL_SIZE


def generation_defaults(model: Any, workspace: str | Path | None = None) -> dict[str, Any]:
    """Every `generate` parameter the user did not give: prompt settings, `size` and
    `out_dir` (see the module docs); `model` is a path or loaded components."""
    out = dict(GENERAL)
    if workspace is not None:
        ws = open_workspace(workspace)
        sample = workspace_recipe(ws).train
        out.update(
            size=tuple(sample.sample_size), steps=sample.sample_steps,
            negative=sample.sample_negative, out_dir=ws.out_dir / "generated",
        )  # fmt: skip
        return out
    size = model_size(model) if isinstance(model, str | Path) else SDXL_SIZE
    return {**out, "size": size, "out_dir": Path("outputs")}
