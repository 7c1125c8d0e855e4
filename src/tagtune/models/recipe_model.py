"""The recipe's model: base (`model.base`) + fix VAE (`model.vae`) + tokenizers, loaded once.

prepare, train, export, the samples taken during training and the card all see the same
model through `load_recipe_model`: the base checkpoint (single file or diffusers folder), with
every VAE weight replaced by the recipe's VAE when one is set (`vae_bake.bake_vae_into`, the
same checks and fitting as `tagtune bake-vae`). The VAE is described by a `VaeSource`: the
recipe's path, its file name and hashes (what run.json, the export header and the card name),
and the fingerprint of the weights as loaded in fp32, which keys the latent cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tagtune.core.errors import WorkspaceError
from tagtune.core.workspace import Workspace
from tagtune.models.components import SDXLComponents
from tagtune.models.modelspec import vae_metadata
from tagtune.recipe.model import Recipe
from tagtune.recipe.workspace import workspace_recipe


@dataclass(frozen=True)
class VaeSource:
    """The VAE a model carries: `path` as the recipe writes it ("" for the base model's own),
    the file or folder `name`, the sha256 and AutoV2 of its weights file (empty when there is
    no single file), and the `fingerprint` of its weights (the latent cache's key)."""

    path: str
    name: str
    sha256: str
    autov2: str
    fingerprint: str

    @property
    def baked(self) -> bool:
        """True when the recipe's `model.vae` replaced the base model's VAE."""
        return bool(self.path)

    def to_json(self) -> dict[str, str]:
        """The run.json / export record form."""
        return asdict(self)

    def metadata(self) -> dict[str, str]:
        """Header keys naming the VAE in an export (none for the base model's own VAE)."""

        return vae_metadata(self.name, self.sha256, self.autov2) if self.baked else {}


def describe_vae(vae: Any, path: str = "", file: Path | None = None) -> VaeSource:
    """A VaeSource for the loaded VAE module `vae`, baked from `file` (recipe path `path`)."""
    from tagtune.models.vae_bake import vae_file_hashes, vae_fingerprint

    sha256, autov2 = vae_file_hashes(file) if file is not None else ("", "")
    name = file.name if file is not None else ""
    return VaeSource(path, name, sha256, autov2, vae_fingerprint(vae))


def vae_source_of(components: Any) -> VaeSource:
    """The components' VaeSource, or one describing their VAE as the base model's own."""
    source = getattr(components, "vae_source", None)
    return source if source is not None else describe_vae(components.vae)


def load_recipe_model(
    ws: Workspace,
    recipe: Recipe | None = None,
    *,
    tokenizers: bool = True,
    dtype: torch.dtype = torch.float32,
) -> SDXLComponents:
    """The recipe's base model with its `model.vae` baked in and `vae_source` set.

    `tokenizers=False` skips them (prepare needs only the VAE). A missing base is a
    WorkspaceError naming `model.base`; a VAE that does not fit is a ModelFileError naming it.
    """
    from tagtune.models.load import load_model
    from tagtune.models.vae_bake import bake_vae_into

    recipe = recipe or workspace_recipe(ws)
    model = recipe.model
    if not model.base:
        raise WorkspaceError(
            "no base model in the recipe", file=ws.recipe_path, field="model.base",
            hint="set model.base to an SDXL .safetensors file or diffusers folder",
        )  # fmt: skip
    tok: Any = (None, None)
    if tokenizers:
        tok = str(ws.resolve(model.tokenizers)) if model.tokenizers else None
    components = load_model(ws.resolve(model.base), tokenizers=tok, dtype=dtype)
    file = None
    if model.vae:
        file = ws.resolve(model.vae)
        bake_vae_into(components.vae, file)
    components.vae_source = describe_vae(components.vae, model.vae, file)
    return components
