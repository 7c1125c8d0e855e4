"""Decode, resize and crop one image to its bucket: the work done in prepare's worker processes.

Kept free of torch so `spawn`ed workers start in a fraction of a second; the job and its
result are plain picklable data. Pixels come back as uint8 (height, width, 3) RGB arrays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tagtune.prepare.buckets import CropPlan


@dataclass(frozen=True)
class ImageJob:
    """One image to cut out: where it is, the size the catalog recorded and its crop plan."""

    index: int
    path: str
    width: int
    height: int
    plan: CropPlan


@dataclass(frozen=True)
class ImageResult:
    """Cropped pixels (uint8 HxWx3), or why the image could not be used (`reason` is a short
    word for the problems table, `error` the detail)."""

    index: int
    pixels: np.ndarray | None
    error: str | None
    seconds: float
    reason: str = ""


class SizeMismatch(ValueError):
    """The file's pixel size is not what the catalog recorded (the file changed)."""


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB pixels; transparent areas become white (not black, as a plain convert would)."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def crop_image(im: Image.Image, plan: CropPlan) -> np.ndarray:
    """Resize `im` to cover the plan's bucket and crop it, in one resampling pass.

    For JPEGs the decoder first shrinks by a power of two (DCT scaling) while staying at least
    as large as the resized size, which makes big photos several times cheaper to decode.
    """
    rh, rw = plan.resized_size
    bh, bw = plan.target_size
    top, left = plan.crop_top_left
    im.draft("RGB", (rw, rh))
    im = to_rgb(im)
    sx, sy = im.width / rw, im.height / rh
    box = (left * sx, top * sy, (left + bw) * sx, (top + bh) * sy)
    out = im.resize((bw, bh), Image.Resampling.LANCZOS, box=box)
    return np.asarray(out, dtype=np.uint8).copy()


def decode_job(job: ImageJob) -> ImageResult:
    """Open, check and crop one image; never raises (a bad file becomes an error string).

    Top-level, so `spawn` worker processes can import and run it.
    """
    start = time.perf_counter()
    try:
        with Image.open(job.path) as im:
            if im.size != (job.width, job.height):
                raise SizeMismatch(
                    f"image is {im.width}x{im.height} but the catalog says "
                    f"{job.width}x{job.height}; run `tagtune ingest` again"
                )
            pixels = crop_image(im, job.plan)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-file problem
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = "size-mismatch" if isinstance(exc, SizeMismatch) else "unreadable"
        return ImageResult(job.index, None, detail, time.perf_counter() - start, reason)
    return ImageResult(job.index, pixels, None, time.perf_counter() - start)
