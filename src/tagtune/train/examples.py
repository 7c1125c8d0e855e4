"""A stage's training examples: the posts of its subset with a caption and a cached latent.

`load_examples` reads the catalog (subset, captions, caption groups, folder repeats) and the
latent cache; `captions_sha256` says which captions a stage saw (run.json).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any

from tagtune.core.catalog import check_subset, open_catalog
from tagtune.core.errors import TrainingError
from tagtune.core.subsets import stage_origin
from tagtune.core.workspace import Workspace
from tagtune.ingest.verdicts import catalog_is_current
from tagtune.recipe.model import StageConfig
from tagtune.recipe.workspace import workspace_recipe
from tagtune.train.caption_draws import protected_texts
from tagtune.train.data import Example


def load_examples(
    ws: Workspace,
    stage: StageConfig,
    latents: Any,
    flip: bool = False,
    exclude: Collection[int] = (),
):
    """Examples of a stage's subset that have a caption and a cached latent; (examples, missing).

    Each carries its post's repeats (a kohya-style folder's N; 1 for Danbooru posts).

    Posts in `exclude` (the held-out images) are left out and not counted as missing.
    """

    with open_catalog(ws.catalog_path, read_only=True) as con:
        if not catalog_is_current(con, workspace_recipe(ws)):
            raise TrainingError(
                "the recipe's safety lists or legacy_ratings changed since the catalog was judged",
                file=ws.catalog_path,
                hint="run `tagtune caption WS` (it re-judges the posts and rebuilds the captions)",
            )
        stages = workspace_recipe(ws).train.stages
        where = check_subset(con, stage.subset, stage_origin(stages, stage, ws.recipe_path))
        rows = con.execute(
            "SELECT c.post_id, c.caption, c.tags, c.groups, coalesce(posts.repeats, 1) "
            f"FROM captions c JOIN posts ON posts.id = c.post_id WHERE {where} ORDER BY c.post_id"
        ).fetchall()
    captions = {
        pid: (cap, tags, groups, rep) for pid, cap, tags, groups, rep in rows if pid not in exclude
    }
    protected = protected_texts(stage, workspace_recipe(ws).caption)  # never dropped
    records = latents.records(list(captions), include_flipped=flip)
    examples = []
    for r in records:
        cap, tags, groups, rep = captions[r.post_id]
        examples.append(Example(r.post_id, cap, tuple(tags or ()), tuple(r.bucket), r,
                                tuple(groups or ()), protected, rep))  # fmt: skip
    missing = len(set(captions) - {e.post_id for e in examples})
    return examples, missing


def captions_sha256(examples: list[Example]) -> str:
    """sha256 of the stage's (post id, caption) lines: which captions this stage saw."""
    h = hashlib.sha256()
    for pid, cap in sorted({(e.post_id, e.caption) for e in examples}):
        h.update(f"{pid}\t{cap}\n".encode())
    return h.hexdigest()
