"""A workspace is one folder: the recipe, the catalog, the caches, the runs and the outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tagtune.core.atomic import write_text_atomic
from tagtune.core.errors import WorkspaceError
from tagtune.core.outputs import claim_output
from tagtune.recipe.model import RECIPE_FILE, Recipe, load_recipe
from tagtune.recipe.toml_io import render_recipe


@dataclass(frozen=True)
class Workspace:
    """Paths of one workspace folder; every verb takes one."""

    root: Path

    @property
    def recipe_path(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def captions_path(self) -> Path:
        return self.root / "captions.jsonl"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def out_dir(self) -> Path:
        return self.root / "out"

    def resolve(self, path: str | Path) -> Path:
        """A path from the recipe or the catalog: `~` expanded, relative ones under the workspace."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root / p

    def inputs(self) -> list[tuple[str, Path]]:
        """The workspace's own records, which no output may replace (see `outputs`)."""
        return [
            ("the recipe", self.recipe_path),
            ("the catalog", self.catalog_path),
            ("the captions", self.captions_path),
        ]

    def recipe(self) -> Recipe:
        """Load and validate this workspace's recipe."""
        return load_recipe(self.recipe_path)


def open_workspace(path: str | Path) -> Workspace:
    """An existing workspace, or a WorkspaceError saying how to create one."""
    root = Path(path)
    if not (root / RECIPE_FILE).is_file():
        raise WorkspaceError(
            f"not a tagtune workspace (no {RECIPE_FILE})",
            file=root,
            hint=f"create one with `tagtune init {root}`",
        )
    return Workspace(root)


def init_workspace(
    path: str | Path, recipe: Recipe | None = None, force: bool = False
) -> Workspace:
    """Create a workspace folder with a commented recipe whose defaults are the reference workflow.

    An existing recipe is replaced only with `force` (the output rule of `outputs.claim_output`).
    """
    ws = Workspace(Path(path))
    if ws.root.exists() and not ws.root.is_dir():
        raise WorkspaceError("exists and is not a folder", file=ws.root)
    if ws.recipe_path.is_file() and not force:
        raise WorkspaceError(
            f"{RECIPE_FILE} already exists", file=ws.root, hint="use --force to overwrite it"
        )
    claim_output(ws.recipe_path, force=force)
    ws.root.mkdir(parents=True, exist_ok=True)
    for sub in (ws.cache_dir, ws.runs_dir, ws.out_dir):
        sub.mkdir(exist_ok=True)
    write_text_atomic(ws.recipe_path, render_recipe(recipe))
    return ws
