"""A workspace's recipe: read it, or create a workspace with a commented one.

The workspace folder itself (`core.workspace`) knows only where the recipe file is; reading and
writing the recipe belongs to this layer, so the core does not depend on the recipe model.
"""

from __future__ import annotations

from pathlib import Path

from tagtune.core.atomic import write_text_atomic
from tagtune.core.errors import WorkspaceError
from tagtune.core.outputs import claim_output
from tagtune.core.workspace import RECIPE_FILE, Workspace
from tagtune.recipe.model import Recipe, load_recipe
from tagtune.recipe.profiles import profile_recipe
from tagtune.recipe.toml_io import render_recipe


def workspace_recipe(ws: Workspace) -> Recipe:
    """Load and validate the workspace's recipe (`WS/tagtune.toml`)."""
    return load_recipe(ws.recipe_path)


def base_setting(root: Path, base: str | Path) -> str:
    """`model.base` for a model at `base`: relative to the workspace `root` when inside it,
    else absolute (checked first: it must exist and be a model, `check_base_model`)."""
    from tagtune.models.base_check import check_base_model

    found = check_base_model(base).resolve()
    root = root.resolve()
    return found.relative_to(root).as_posix() if found.is_relative_to(root) else str(found)


def init_workspace(
    path: str | Path,
    recipe: Recipe | None = None,
    force: bool = False,
    *,
    profile: str | None = None,
    base: str | Path | None = None,
) -> Workspace:
    """Create a workspace folder with a commented recipe: `recipe`, or the recipe of `profile`
    (`profiles.profile_recipe`, default the reference workflow), with `model.base` set to
    `base` when given (checked before anything is written).

    An existing recipe is replaced only with `force` (the output rule of `outputs.claim_output`).
    """
    ws = Workspace(Path(path))
    recipe = recipe if recipe is not None else profile_recipe(profile)
    if base is not None:
        recipe = recipe.model_copy(deep=True)
        recipe.model.base = base_setting(ws.root, base)
    if ws.root.exists() and not ws.root.is_dir():
        raise WorkspaceError("exists and is not a folder", file=ws.root)
    if ws.recipe_path.is_file() and not force:
        raise WorkspaceError(
            f"{RECIPE_FILE} already exists", file=ws.root, hint="use `force` to overwrite it"
        )
    claim_output(ws.recipe_path, force=force)
    ws.root.mkdir(parents=True, exist_ok=True)
    for sub in (ws.cache_dir, ws.runs_dir, ws.out_dir):
        sub.mkdir(exist_ok=True)
    write_text_atomic(ws.recipe_path, render_recipe(recipe))
    return ws
