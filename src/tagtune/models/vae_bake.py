"""Bake a VAE into a single-file checkpoint: replace every `first_stage_model.*` tensor.

Base checkpoints often ship with a fixed fp16 VAE baked in. The VAE may be a diffusers VAE
folder (or a diffusers pipeline folder with `vae/`), a single-file VAE with bare LDM keys
(`encoder.*`, `decoder.*`, ...) or with the `first_stage_model.` prefix, or a diffusers-layout
VAE file. It must hold exactly the checkpoint's VAE tensors with the same shapes; each tensor
keeps the checkpoint's dtype. The rest of the checkpoint is streamed, never held whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tagtune.errors import ModelFileError
from tagtune.models import keys
from tagtune.models.configs import (
    METADATA_KEY,
    configs_from_metadata,
    read_config_file,
    sdxl_base_configs,
)
from tagtune.models.load import read_checkpoint, read_folder_component
from tagtune.models.modelspec import HASH_KEY
from tagtune.models.safetensors_io import LazyTensor, lazy_tensors, write_safetensors
from tagtune.outputs import claim_output

DIFFUSERS_VAE_SIGNATURE = "encoder.down_blocks."
LDM_VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


@dataclass(frozen=True)
class BakeResult:
    """What `bake_vae` wrote: the output file, tensors replaced, and how many changed value."""

    path: Path
    replaced: int
    changed: int
    vae: str


def _vae_config(folder_config: Path | None, ckpt_meta: dict[str, str], ckpt: Path) -> dict:
    """The VAE config beside the VAE, else the checkpoint's own, else SDXL's; checked."""
    if folder_config is not None and folder_config.exists():
        return read_config_file(folder_config, "vae")
    if METADATA_KEY in ckpt_meta:
        return configs_from_metadata(ckpt_meta[METADATA_KEY], ckpt)["vae"]
    return sdxl_base_configs()["vae"]


def read_vae(
    vae: str | Path, ckpt_meta: dict[str, str] | None = None, ckpt: str | Path = ""
) -> dict[str, torch.Tensor]:
    """VAE tensors under bare LDM names (`encoder.down.0.block.0.conv1.weight`, ...).

    `ckpt_meta` and `ckpt`: the header metadata and path of the checkpoint it goes into,
    whose `tagtune.configs` give the VAE's config when no config.json lies beside it."""
    vae = Path(vae)
    meta = ckpt_meta or {}
    if vae.is_dir():
        folder = vae / "vae" if (vae / "vae").is_dir() else vae
        state = read_folder_component(folder)
        return keys.vae_diffusers_to_ldm_unprefixed(
            state, _vae_config(folder / "config.json", meta, Path(ckpt))
        )
    state, _ = read_checkpoint(vae)
    if any(k.startswith(keys.VAE_PREFIX) for k in state):
        return {
            k.removeprefix(keys.VAE_PREFIX): v
            for k, v in state.items()
            if k.startswith(keys.VAE_PREFIX)
        }
    if any(k.startswith(DIFFUSERS_VAE_SIGNATURE) for k in state):
        return keys.vae_diffusers_to_ldm_unprefixed(
            state, _vae_config(vae.parent / "config.json", meta, Path(ckpt))
        )
    found = {k: v for k, v in state.items() if k.startswith(LDM_VAE_ROOTS)}
    if not found:
        raise ModelFileError("holds no VAE tensors", file=vae)
    return found


def _fit(name: str, new: torch.Tensor, old: LazyTensor | torch.Tensor, vae: Path) -> torch.Tensor:
    want = tuple(old.shape)
    if tuple(new.shape) != want:
        # LDM mid-attention weights are 1x1 convs; some files keep them as [C, C]
        if new.ndim == 2 and want == (*new.shape, 1, 1):
            new = new.reshape(want)
        else:
            raise ModelFileError(
                f"VAE tensor shape {list(new.shape)} does not match the checkpoint's {list(want)} "
                "(a VAE of another model?)",
                file=vae,
                field=name,
            )
    return new.to(old.dtype)


def bake_vae(ckpt: str | Path, vae: str | Path, out: str | Path, force: bool = False) -> BakeResult:
    """Write `out`: checkpoint `ckpt` with every `first_stage_model.*` tensor taken from `vae`.

    Refuses a VAE that lacks a tensor, has an extra one, or differs in shape. Metadata is kept;
    `modelspec.hash_sha256` is recomputed when present, `tagtune.baked_vae` names the VAE.
    An existing `out` is replaced only with `force`; `ckpt` and `vae` never are (the original
    stays, so a wrong VAE can be baked again).
    """
    ckpt, vae, out = Path(ckpt), Path(vae), Path(out)
    claim_output(out, force=force, inputs=[("the checkpoint", ckpt), ("the VAE", vae)])
    if ckpt.suffix.lower() == ".safetensors":
        tensors, meta = lazy_tensors(ckpt)
    else:
        state, meta = read_checkpoint(ckpt)
        tensors = dict(state)
    targets = sorted(k for k in tensors if k.startswith(keys.VAE_PREFIX))
    if not targets:
        raise ModelFileError(f"has no {keys.VAE_PREFIX}* tensors to replace", file=ckpt)
    new = read_vae(vae, meta, ckpt)
    want = {k.removeprefix(keys.VAE_PREFIX) for k in targets}
    missing, extra = sorted(want - set(new)), sorted(set(new) - want)
    if missing or extra:
        first = (missing or extra)[0]
        raise ModelFileError(
            f"VAE does not fit the checkpoint: {len(missing)} tensors missing, {len(extra)} "
            f"unexpected (first: {first})",
            file=vae,
        )
    out_tensors: dict[str, torch.Tensor | LazyTensor] = dict(tensors)
    changed = 0
    for name in targets:
        old = tensors[name]
        fitted = _fit(name, new[name.removeprefix(keys.VAE_PREFIX)], old, vae)
        before = old.load() if isinstance(old, LazyTensor) else old
        changed += not torch.equal(before, fitted)
        out_tensors[name] = fitted
    meta = {**meta, "tagtune.baked_vae": vae.name}
    write_safetensors(out, out_tensors, meta, hash_key=HASH_KEY if HASH_KEY in meta else None)
    return BakeResult(out, len(targets), changed, str(vae))
