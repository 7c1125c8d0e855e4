"""What `tagtune convert` and `tagtune tiny-model` do: load or build, then write one layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from tagtune.core.errors import InputError
from tagtune.core.outputs import Inputs, check_output, claim_output
from tagtune.models.modelspec import modelspec_metadata

Format = Literal["single-file", "diffusers"]
FORMATS: tuple[str, ...] = ("single-file", "diffusers")


@dataclass(frozen=True)
class WriteResult:
    """A model written: where, in which layout and dtype, and how many tensors it holds."""

    path: Path
    format: str
    dtype: str
    tensors: int
    bytes: int


def _size_and_tensors(path: Path) -> tuple[int, int]:
    """Bytes on disk and tensors stored (read from the safetensors headers only)."""
    from tagtune.models.safetensors_io import read_header

    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    tensors = sum(len(read_header(p).tensors) for p in files if p.suffix == ".safetensors")
    return size, tensors


def _check_output(out: Path, overwrite: bool, fmt: str, dtype: str, inputs: Inputs = ()) -> None:
    """Refuse bad options, an input as the output, and an existing output before slow work."""
    from tagtune.models.save import parse_dtype

    if fmt not in FORMATS:
        raise InputError("unknown format", field="format", value=fmt, allowed=", ".join(FORMATS))
    parse_dtype(dtype)
    if fmt == "single-file" and out.suffix != ".safetensors":
        raise InputError(
            "a single-file checkpoint needs the .safetensors extension (UIs go by it)", file=out
        )
    check_output(out, force=overwrite, inputs=inputs, folder=fmt == "diffusers")


def write_model(
    components,
    out: str | Path,
    fmt: str,
    dtype: str = "fp16",
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    inputs: Inputs = (),
) -> WriteResult:
    """Write components as a single file or a diffusers folder (see `save.py`).

    The output rule of `outputs.claim_output` applies: an existing output is replaced only
    with `overwrite`, an input (`inputs`) never.
    """
    from tagtune.models.save import save_diffusers, save_single_file

    out = Path(out)
    _check_output(out, overwrite, fmt, dtype, inputs)
    claim_output(out, force=overwrite, inputs=inputs, folder=fmt == "diffusers")
    if fmt == "single-file":
        save_single_file(components, out, dtype=dtype, metadata=metadata)
    else:
        save_diffusers(components, out, dtype=dtype, overwrite=overwrite)
    size, tensors = _size_and_tensors(out)
    return WriteResult(out, fmt, dtype, tensors, size)


def convert_model(
    src: str | Path,
    dst: str | Path,
    dtype: str = "fp16",
    tokenizers: Any = None,
    overwrite: bool = False,
    title: str = "",
    author: str = "",
    license: str = "",
    description: str = "",
) -> WriteResult:
    """A diffusers folder becomes a single file; a single file becomes a diffusers folder.

    The single file gets ModelSpec metadata (title = `title` or the output name; author,
    licence and description when given) and `tagtune.converted_from`.
    """
    from tagtune.models.load import load_model

    src, dst = Path(src), Path(dst)
    fmt = "single-file" if src.is_dir() else "diffusers"
    inputs = [("the source model", src), ("the tokenizers folder", tokenizers)]
    _check_output(dst, overwrite, fmt, dtype, inputs)
    components = load_model(src, tokenizers=tokenizers, dtype=torch.float32)
    meta = modelspec_metadata(
        title or dst.stem, author=author, license=license, description=description,
        extra={"tagtune.converted_from": src.name},
    )  # fmt: skip
    return write_model(components, dst, fmt, dtype, meta, overwrite, inputs)


def write_tiny_model(
    out: str | Path,
    fmt: str = "single-file",
    seed: int = 0,
    dtype: str = "fp16",
    overwrite: bool = False,
) -> WriteResult:
    """A tiny random SDXL (full architecture, small widths) written to `out`.

    Same seed, same bytes: the header carries no date.
    """
    from tagtune.models.tiny import build_tiny_sdxl

    _check_output(Path(out), overwrite, fmt, dtype)
    components = build_tiny_sdxl(seed)
    meta = modelspec_metadata(
        f"tagtune tiny SDXL (seed {seed})",
        date="",
        description="Randomly initialised SDXL architecture with small widths, for tests.",
        extra={"tagtune.tiny_seed": str(seed)},
    )
    return write_model(components, out, fmt, dtype, meta, overwrite)
