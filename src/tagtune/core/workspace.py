"""A workspace is one folder: the recipe, the catalog, the caches, the runs and the outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tagtune.core.errors import WorkspaceError

RECIPE_FILE = "tagtune.toml"
"""The recipe's file name inside a workspace folder (what marks a folder as a workspace)."""


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
