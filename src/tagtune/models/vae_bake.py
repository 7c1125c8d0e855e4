"""Bake a VAE into a checkpoint: replace every VAE tensor, in a file or in a loaded model.

Base checkpoints often ship with a fixed fp16 VAE baked in. The VAE may be a diffusers VAE
folder (or a diffusers pipeline folder with `vae/`), a single-file VAE with bare LDM keys
(`encoder.*`, `decoder.*`, ...) or with the `first_stage_model.` prefix, or a diffusers-layout
VAE file. It must hold exactly the checkpoint's VAE tensors with the same shapes; each tensor
keeps the checkpoint's dtype. `bake_vae` writes a file (the rest of the checkpoint is streamed,
never held whole); `bake_vae_into` replaces the weights of a loaded VAE module (what the
recipe's `model.vae` does to the model that prepare, train and export load). Both check and
fit the VAE with `fit_vae`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tagtune.core.errors import ModelFileError
from tagtune.core.outputs import claim_output
from tagtune.models import keys
from tagtune.models.configs import (
    METADATA_KEY,
    configs_from_metadata,
    read_config_file,
    sdxl_base_configs,
)
from tagtune.models.hashes import file_hashes
from tagtune.models.load import read_checkpoint, read_folder_component, weights_file
from tagtune.models.modelspec import HASH_KEY, vae_metadata
from tagtune.models.safetensors_io import LazyTensor, lazy_tensors, write_safetensors

DIFFUSERS_VAE_SIGNATURE = "encoder.down_blocks."
LDM_VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


@dataclass(frozen=True)
class BakeResult:
    """What `bake_vae` wrote: the output file, tensors replaced, and how many changed value."""

    path: Path
    replaced: int
    changed: int
    vae: str


def _vae_config(
    folder_config: Path | None, ckpt_meta: dict[str, str], ckpt: Path, config: Mapping | None
) -> dict:
    """The VAE config beside the VAE, else `config` (the model it goes into), else the
    checkpoint's own, else SDXL's; a config read from a file is checked before use."""
    if folder_config is not None and folder_config.is_file():
        return read_config_file(folder_config, "vae")
    if config is not None:
        return dict(config)
    if METADATA_KEY in ckpt_meta:
        return configs_from_metadata(ckpt_meta[METADATA_KEY], ckpt)["vae"]
    return sdxl_base_configs()["vae"]


def vae_folder(vae: Path) -> Path:
    """The diffusers VAE folder of `vae`: the folder itself or a pipeline folder's `vae/`."""
    return vae / "vae" if (vae / "vae").is_dir() else vae


def read_vae(
    vae: str | Path,
    ckpt_meta: dict[str, str] | None = None,
    ckpt: str | Path = "",
    config: Mapping | None = None,
) -> dict[str, torch.Tensor]:
    """VAE tensors under bare LDM names (`encoder.down.0.block.0.conv1.weight`, ...).

    A diffusers-layout VAE without its own config.json is read with `config` (the VAE config
    of the model it goes into), else the stored configs of the checkpoint at `ckpt` (header
    metadata `ckpt_meta`), else SDXL's.
    """
    vae = Path(vae)
    meta = ckpt_meta or {}
    if vae.is_dir():
        folder = vae_folder(vae)
        state = read_folder_component(folder)
        return keys.vae_diffusers_to_ldm_unprefixed(
            state, _vae_config(folder / "config.json", meta, Path(ckpt), config)
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
            state, _vae_config(vae.parent / "config.json", meta, Path(ckpt), config)
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


def fit_vae(
    current: Mapping[str, torch.Tensor | LazyTensor],
    vae: str | Path,
    ckpt_meta: dict[str, str] | None = None,
    config: Mapping | None = None,
    ckpt: str | Path = "",
) -> dict[str, torch.Tensor]:
    """The tensors of the VAE at `vae` for every tensor of `current` (bare LDM names), each in
    the shape and dtype of the one it replaces.

    A VAE that lacks a tensor, has an extra one, or differs in shape is a ModelFileError.
    """
    vae = Path(vae)
    new = read_vae(vae, ckpt_meta, ckpt, config)
    missing, extra = sorted(set(current) - set(new)), sorted(set(new) - set(current))
    if missing or extra:
        first = (missing or extra)[0]
        raise ModelFileError(
            f"VAE does not fit the checkpoint: {len(missing)} tensors missing, {len(extra)} "
            f"unexpected (first: {first})",
            file=vae,
        )
    return {
        name: _fit(keys.VAE_PREFIX + name, new[name], current[name], vae)
        for name in sorted(current)
    }


def bake_vae_into(module: Any, vae: str | Path) -> int:
    """Replace every weight of the loaded diffusers VAE `module` with the VAE at `vae`, in place.

    The same checks as `bake_vae` (via `fit_vae`); each tensor keeps the module's dtype.
    Returns the number of tensors replaced.
    """
    from diffusers.loaders import single_file_utils as sfu

    config = dict(module.config)
    current = keys.vae_diffusers_to_ldm_unprefixed(module.state_dict(), config)
    fitted = fit_vae(current, vae, config=config)
    ldm = {keys.VAE_PREFIX + k: v for k, v in fitted.items()}
    module.load_state_dict(sfu.convert_ldm_vae_checkpoint(ldm, config), strict=True)
    return len(fitted)


def vae_weights_file(vae: str | Path) -> Path | None:
    """The one file holding the VAE's weights (the file itself, or a diffusers folder's
    weights file); None for a sharded folder. Its hashes name the VAE in records and cards."""
    vae = Path(vae)
    if vae.is_file():
        return vae
    try:
        return weights_file(vae_folder(vae))
    except ModelFileError:
        return None


def bake_vae(ckpt: str | Path, vae: str | Path, out: str | Path, force: bool = False) -> BakeResult:
    """Write `out`: checkpoint `ckpt` with every `first_stage_model.*` tensor taken from `vae`.

    Refuses a VAE that lacks a tensor, has an extra one, or differs in shape. Metadata is kept;
    `modelspec.hash_sha256` is recomputed when present, `tagtune.baked_vae` names the VAE and
    `tagtune.baked_vae_sha256` / `_autov2` hash its weights file. An existing `out` is replaced
    only with `force`; `ckpt` and `vae` never are (the original stays, so a wrong VAE can be
    baked again).
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
    fitted = fit_vae(
        {k.removeprefix(keys.VAE_PREFIX): tensors[k] for k in targets}, vae, meta, ckpt=ckpt
    )
    out_tensors: dict[str, torch.Tensor | LazyTensor] = dict(tensors)
    changed = 0
    for name in targets:
        old = tensors[name]
        new = fitted[name.removeprefix(keys.VAE_PREFIX)]
        before = old.load() if isinstance(old, LazyTensor) else old
        changed += not torch.equal(before, new)
        out_tensors[name] = new
    meta = {**meta, **vae_metadata(vae.name, *vae_file_hashes(vae))}
    write_safetensors(out, out_tensors, meta, hash_key=HASH_KEY if HASH_KEY in meta else None)
    return BakeResult(out, len(targets), changed, str(vae))


def _file_hashes(path: Path | None) -> tuple[str, str]:
    """(sha256, AutoV2) of a file, or empty strings without one."""
    if path is None:
        return "", ""

    h = file_hashes(path)
    return h["sha256"] or "", h["autov2"] or ""


def vae_file_hashes(vae: str | Path) -> tuple[str, str]:
    """(sha256, AutoV2) of the VAE's weights file (see `vae_weights_file`); empty when sharded."""
    return _file_hashes(vae_weights_file(vae))


def vae_fingerprint(vae: Any) -> str:
    """sha256 over the VAE's weights: every name, shape and value, floats as fp32 bytes.

    Any change to a weight's value (a baked fixed VAE, weights rounded to another precision)
    gives another hash, so latents of one VAE are never served for another. The dtype the
    weights are held in does not count: an fp16 VAE file loaded into fp32 modules, or the
    same values held in bf16, hash alike (and as tagtune's earlier fp32-only hash did).
    """
    h = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        t = tensor.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.float32)
        t = t.contiguous().reshape(-1)
        h.update(f"{name}|{tuple(tensor.shape)}|{str(t.dtype)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
