"""tagtune: a Danbooru-style image collection in, a fine-tuned SDXL checkpoint out.

The pipeline's entry points, one per step, for a notebook or a script (the CLI calls the same):

    ws = tagtune.init_workspace("shapes-xl")           # or tagtune.open_workspace(path)
    tagtune.ingest_sources(ws, [Path("gallery-dl/")])  # catalog the posts and their images
    tagtune.build_captions(ws)                         # captions from tags (the recipe's rules)
    tagtune.prepare_workspace(ws)                      # buckets and the latent cache
    tagtune.run_training(ws)                           # the recipe's stages, resumable
    tagtune.export_model(ws)                           # one single-file SDXL checkpoint
    tagtune.write_card(ws); tagtune.write_report(ws)   # model card, HTML report

plus `merge_checkpoints` (with a `MergeSpec`) and `load_for_generation` / `generate_images`.
The stage packages (`tagtune.ingest`, `tagtune.train`, ...) keep their folder names, so the
entry points are named after what they do. They are imported on first use (PEP 562), so
`import tagtune` loads neither torch nor diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_ENTRY_POINTS = {
    "init_workspace": "tagtune.recipe.workspace",
    "open_workspace": "tagtune.core.workspace",
    "ingest_sources": ("tagtune.ingest.driver", "ingest"),
    "build_captions": "tagtune.captions.build",
    "prepare_workspace": "tagtune.prepare.run",
    "run_training": "tagtune.train.stages",
    "export_model": "tagtune.train.export",
    "MergeSpec": "tagtune.merge.checkpoints",
    "merge_checkpoints": "tagtune.merge.checkpoints",
    "load_for_generation": "tagtune.generate.pipeline",
    "generate_images": ("tagtune.generate.pipeline", "generate"),
    "write_card": "tagtune.card",
    "write_report": "tagtune.report",
}

__all__ = sorted(_ENTRY_POINTS)


def __getattr__(name: str) -> Any:
    """Import an entry point's module on first use and return the entry point."""
    where = _ENTRY_POINTS.get(name)
    if where is None:
        raise AttributeError(f"module 'tagtune' has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
