"""Where each kohya LoRA module lies in a single-file SDXL checkpoint (for streaming tools).

extract-lora and merge-lora work on single files tensor by tensor, never loading a model:
this maps every LoRA target (`lora_targets` of the model the file's configs describe, built
on the meta device, so no memory) to the single-file tensor it changes. Text encoder 2's
q/k/v projections are row slices of OpenCLIP's fused `attn.in_proj_weight` (q, k, v in
that order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tagtune.core.errors import ModelFileError
from tagtune.models import keys
from tagtune.models.components import SDXLComponents
from tagtune.models.load import checked_empty_module
from tagtune.models.lora_names import COMPONENTS, lora_targets
from tagtune.models.safetensors_io import Header

FLOAT_CODES = ("F16", "BF16", "F32", "F64")


@dataclass(frozen=True)
class FileTarget:
    """One LoRA target in a single file: tensor name, row slice (or None), weight shape;
    `locon` when only a LoCon LoRA (with convolutions) targets it."""

    name: str
    component: str
    key: str
    rows: tuple[int, int] | None
    shape: tuple[int, ...]
    locon: bool = False
    module_path: str = ""


def meta_components(configs: Mapping[str, Mapping[str, Any]], source: str = "") -> SDXLComponents:
    """U-Net and both text encoders of these configs on the meta device (no weights, no memory)."""
    parts = {
        name: checked_empty_module(name, configs[name], source)
        for name in ("unet", "text_encoder", "text_encoder_2")
    }
    return SDXLComponents(
        parts["unet"], None, parts["text_encoder"], parts["text_encoder_2"], None, None
    )


def _te2_key(bare: str, width: int) -> tuple[str, tuple[int, int] | None]:
    idx, _, rest = bare.removeprefix("encoder.layers.").partition(".")
    base = f"{keys.TE2_PREFIX}transformer.resblocks.{idx}."
    proj = rest.removeprefix("self_attn.")
    if rest.startswith("self_attn.") and proj in keys.TE2_QKV:
        j = keys.TE2_QKV.index(proj)
        return base + "attn.in_proj_weight", (j * width, (j + 1) * width)
    for old, new in keys.TE2_LAYER_RENAMES.items():
        if (rest + ".").startswith(old):
            return base + new + "weight", None
    return base + rest + ".weight", None


def file_key(
    component: str, module_path: str, shape: tuple[int, ...], rows_table: list
) -> tuple[str, tuple[int, int] | None]:
    """(single-file tensor name, row slice or None) of one module's weight."""
    if component == "unet":
        ldm = keys.unet_ldm_key(module_path + ".weight", rows_table)
        return keys.UNET_PREFIX + str(ldm), None
    bare = module_path.removeprefix("text_model.")
    if component == "te1":
        return f"{keys.TE1_PREFIX}text_model.{bare}.weight", None
    return _te2_key(bare, shape[0])


def file_targets(
    configs: Mapping[str, Mapping[str, Any]],
    *,
    convs: bool = False,
    unet: bool = True,
    text_encoders: bool = True,
    source: str = "",
) -> dict[str, FileTarget]:
    """Every kohya LoRA target of a single file with these configs: name -> FileTarget."""
    comps = meta_components(configs, source)
    rows_table = keys.unet_block_prefixes(comps.unet.config)
    out: dict[str, FileTarget] = {}
    targets = lora_targets(comps, unet=unet, text_encoders=text_encoders, convs=convs)
    plain = lora_targets(comps, unet=unet, text_encoders=text_encoders) if convs else targets
    for name, (component, path) in targets.items():
        module = getattr(comps, COMPONENTS[component]).get_submodule(path)
        shape = tuple(module.weight.shape)
        key, rows = file_key(component, path, shape, rows_table)
        out[name] = FileTarget(name, component, key, rows, shape, name not in plain, path)
    return out


def _fits(shape: tuple[int, ...], t: FileTarget) -> bool:
    if t.rows is None:
        return shape == t.shape
    return len(shape) == len(t.shape) and shape[0] >= t.rows[1] and shape[1:] == t.shape[1:]


def check_file_targets(header: Header, targets: Mapping[str, FileTarget]) -> None:
    """Raise ModelFileError unless every target's tensor is in the file, floating point, and
    of the shape the configs give (the first few that are not are listed)."""
    bad = []
    for t in targets.values():
        info = header.tensors.get(t.key)
        if info is None:
            bad.append(f"{t.key} missing")
        elif info.dtype not in FLOAT_CODES:
            bad.append(f"{t.key} is {info.dtype}, not floating point")
        elif not _fits(info.shape, t):
            bad.append(f"{t.key} is {list(info.shape)}, not {list(t.shape)}")
    if bad:
        raise ModelFileError(
            f"not an SDXL checkpoint of its configuration: {len(bad)} LoRA targets do not fit "
            f"(first: {'; '.join(bad[:3])})",
            file=header.path,
        )
