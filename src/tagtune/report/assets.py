"""The files next to the report page (`WS/out/report/`): charts and thumbnails.

Every file is named after a hash of what it shows, so an unchanged chart or thumbnail is
written once and reused by the next rewrite (the watch loop stays cheap), and a browser never
shows a stale copy. Each file is written atomically. Only files whose names follow this
scheme are ever removed, and only when neither the new page nor the page it replaces uses them
(a browser still loading the previous page keeps its images).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tagtune.core.atomic import atomic_path

ASSET_NAME = re.compile(r"^(chart|crop|grid)-[0-9a-f]{16}\.(svg|jpg)$")
THUMB_QUALITY = 82


def _digest(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:16]


class Assets:
    """Collects the asset files one page uses; `url()`s are relative to the page."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.used: set[str] = set()
        self.failed: list[tuple[str, str]] = []

    def _url(self, name: str) -> str:
        self.used.add(name)
        return f"{self.folder.name}/{name}"

    def chart(self, svg: bytes) -> str:
        """Store an SVG chart; returns its URL."""
        name = f"chart-{_digest(svg)}.svg"
        path = self.folder / name
        if not path.is_file():
            with atomic_path(path) as tmp:
                tmp.write_bytes(svg)
        return self._url(name)

    def image(self, prefix: str, key: str, make: Callable[[], Any], label: str = "") -> str | None:
        """Store the PIL image `make()` returns as a JPEG named after `key` (its source file,
        modification time and what is drawn); reused when it exists. None when the source
        image cannot be read (noted in `failed` as `label` and why)."""
        name = f"{prefix}-{_digest(key)}.jpg"
        path = self.folder / name
        if not path.is_file():
            from PIL import Image

            try:
                image = make()
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                # an unreadable, truncated, vanished or absurdly large source: no thumbnail
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.failed.append((label or key, why))
                return None
            with atomic_path(path) as tmp:
                image.convert("RGB").save(tmp, format="JPEG", quality=THUMB_QUALITY, optimize=True)
        return self._url(name)

    def bytes_used(self) -> int:
        """Total size of the files this page uses."""
        return sum(
            (self.folder / n).stat().st_size for n in self.used if (self.folder / n).is_file()
        )

    def prune(self, keep: set[str]) -> list[str]:
        """Remove asset files used by neither this page nor `keep` (names); returns them."""
        if not self.folder.is_dir():
            return []
        gone = []
        for path in self.folder.iterdir():
            if ASSET_NAME.match(path.name) and path.name not in self.used | keep:
                path.unlink(missing_ok=True)
                gone.append(path.name)
        return gone


def referenced(page: str, folder_name: str) -> set[str]:
    """Asset names an existing page refers to (so they survive the next rewrite)."""
    pattern = re.compile(re.escape(folder_name) + r"/([A-Za-z0-9.\-]+)")
    return {m for m in pattern.findall(page) if ASSET_NAME.match(m)}
