"""Image checks that trust nothing about the file, and the index of an images folder.

A file is accepted only when its header reads, its pixel count is below the bomb limit (read
from the header, before any decoding), it has one frame, its shorter side is large enough,
and it both verifies and fully decodes. Each refusal is a short fixed reason word.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tagtune.core.untrusted import NOT_REGULAR, NotRegularFile, read_regular

VIDEO_EXTS = frozenset({"mp4", "webm", "zip", "swf", "mkv", "mov", "avi", "ugoira"})
"""Video and archive extensions (an ugoira arrives as zip or webm): never ingested."""
ANIMATED_EXTS = frozenset({"gif"})
"""Extensions refused as animations without decoding."""
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "avif", "tif", "tiff", "jxl"})
"""Still-image extensions that are checked and may be ingested."""
MEDIA_EXTS = IMAGE_EXTS | VIDEO_EXTS | ANIMATED_EXTS
"""Every extension a collection folder scan looks at (others, such as .txt, are ignored)."""

REASONS = (
    "zero-byte",
    "unreadable",
    "truncated",
    "too-large",
    "animated",
    "video",
    "too-small",
    "duplicate",
    "duplicate-id",
    "bad-metadata",
    "bad-field",
    "md5-differs",
    "no-image",
    "no-metadata",
    "unknown-favorite",
)
"""Every problem reason ingest records (short fixed words, counted in the summary).
`bad-field` (a value kept as unknown) and `md5-differs` (file kept) do not skip anything."""

_GALLERY_DL = re.compile(r"^danbooru_(\d+)_([0-9a-fA-F]{32})$")
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_ID = re.compile(r"^\d+$")


@dataclass(frozen=True)
class ImageCheck:
    """The outcome of checking one file: accepted (reason None) with its facts, or refused."""

    path: str
    reason: str | None = None
    detail: str | None = None
    sha256: str | None = None
    md5: str | None = None
    width: int = 0
    height: int = 0
    format: str | None = None
    bytes: int = 0


def _ext(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


@contextlib.contextmanager
def pil_limits_off() -> Iterator[None]:
    """Turn off Pillow's own bomb limit and warning: check_image applies the recipe's limit
    from the header instead. Process-wide, so set once around a batch of threads."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit


def check_image(
    path: str | Path, max_pixels: int, min_side: int, manage_limits: bool = True
) -> ImageCheck:
    """Check one image file; never raises for a bad file, returns the reason instead.

    `manage_limits=False` when the caller already holds pil_limits_off (thread pools).
    """
    path = Path(path)
    p = str(path)
    ext = _ext(path)
    if ext in VIDEO_EXTS:
        return ImageCheck(p, "video", f"{ext} files are not ingested")
    if ext in ANIMATED_EXTS:
        return ImageCheck(p, "animated", f"{ext} files are not ingested")
    try:
        data = read_regular(path)
    except NotRegularFile:
        return ImageCheck(p, "unreadable", NOT_REGULAR)
    except OSError as exc:
        return ImageCheck(p, "unreadable", f"cannot read: {exc.strerror}")
    if not data:
        return ImageCheck(p, "zero-byte", "file is empty")
    if not manage_limits:
        return _check_bytes(p, data, max_pixels, min_side)
    with pil_limits_off():
        return _check_bytes(p, data, max_pixels, min_side)


def check_images(
    paths: list[str], max_pixels: int, min_side: int, workers: int | None = None
) -> Iterator[ImageCheck]:
    """check_image over many files in threads (Pillow decodes without the GIL), in order."""
    workers = workers or min(4, os.cpu_count() or 1)
    with pil_limits_off():
        if workers <= 1 or len(paths) < 4:
            for path in paths:
                yield check_image(path, max_pixels, min_side, manage_limits=False)
            return
        with ThreadPoolExecutor(workers) as pool:
            yield from pool.map(
                lambda path: check_image(path, max_pixels, min_side, manage_limits=False), paths
            )


def _check_bytes(p: str, data: bytes, max_pixels: int, min_side: int) -> ImageCheck:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        fmt = img.format
    except Image.DecompressionBombError as exc:  # Pillow's limit, if another thread reset it
        return ImageCheck(p, "too-large", str(exc).split(".")[0])
    except Exception:
        return ImageCheck(
            p, "unreadable", "not a readable image (unknown format or corrupt header)"
        )
    if width * height > max_pixels:
        return ImageCheck(
            p,
            "too-large",
            f"{width}x{height} is over {max_pixels} pixels",
            width=width,
            height=height,
        )
    if getattr(img, "n_frames", 1) > 1:
        return ImageCheck(p, "animated", f"{img.n_frames} frames", width=width, height=height)
    if min(width, height) < min_side:
        return ImageCheck(
            p,
            "too-small",
            f"{width}x{height}: shorter side under {min_side}",
            width=width,
            height=height,
        )
    try:
        img.verify()
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:
        return ImageCheck(p, "truncated", str(exc).splitlines()[0][:200] or type(exc).__name__)
    return ImageCheck(
        p,
        None,
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        width=width,
        height=height,
        format=fmt,
        bytes=len(data),
    )


def name_keys(path: Path) -> list[tuple[str, str]]:
    """How a file name can match a post: [("md5", ...), ("id", ...)] from its stem.

    `{md5}.{ext}`, gallery-dl's `danbooru_{id}_{md5}.{ext}`, or `{id}.{ext}`.
    """
    stem = path.name.split(".")[0]
    m = _GALLERY_DL.match(stem)
    if m:
        return [("md5", m.group(2).lower()), ("id", m.group(1))]
    if _MD5.match(stem):
        return [("md5", stem.lower())]
    if _ID.match(stem):
        return [("id", str(int(stem)))]
    return []


def index_images(folder: str | Path) -> list[tuple[str, str, str]]:
    """(key kind, key, path) for every media file under `folder` whose name can match a post."""
    rows: list[tuple[str, str, str]] = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and _ext(path) in MEDIA_EXTS:
            rows.extend((kind, key, str(path)) for kind, key in name_keys(path))
    return rows
