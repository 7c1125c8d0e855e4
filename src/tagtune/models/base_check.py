"""Is a path a base model tagtune can train from? Checked before a recipe names it.

A single-file checkpoint must be a safetensors file whose header (`read_header`: no tensor
data is read) holds SDXL U-Net weights; a diffusers folder must hold `model_index.json`.
"""

from __future__ import annotations

from pathlib import Path

from tagtune.core.errors import ModelFileError
from tagtune.models.safetensors_io import read_header

UNET_PREFIX = "model.diffusion_model."


def check_base_model(path: str | Path) -> Path:
    """`path` when it is a usable base model, else a one-line ModelFileError naming it."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelFileError(
                "not a diffusers folder (no model_index.json)", file=path, field="model.base"
            )
        return path
    if not path.exists():
        raise ModelFileError("no such file or folder", file=path, field="model.base")
    if path.suffix.lower() != ".safetensors":
        raise ModelFileError(
            "not a .safetensors file or a diffusers folder", file=path, field="model.base",
            hint="convert it with `tagtune convert`",
        )  # fmt: skip
    header = read_header(path)
    if not any(name.startswith(UNET_PREFIX) for name in header.tensors):
        raise ModelFileError(
            f"no SDXL U-Net weights ({UNET_PREFIX}*) in the file", file=path, field="model.base"
        )
    return path
