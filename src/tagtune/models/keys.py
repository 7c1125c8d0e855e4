"""diffusers -> original (single-file) SDXL key names, as data tables and small helpers.

diffusers ships only original -> diffusers converters (`diffusers.loaders.single_file_utils`),
which `load.py` uses. This module is the other direction, which we own: the single-file
layout that AUTOMATIC1111, ComfyUI and `from_single_file` expect.

- U-Net: `model.diffusion_model.*`, LDM block numbering (`input_blocks.N.M`, `middle_block.N`,
  `output_blocks.N.M`), resnet inner names `in_layers`/`out_layers`/`emb_layers`.
- VAE: `first_stage_model.*`; decoder blocks numbered in reverse; the mid attention's
  q/k/v/proj_out are 1x1 conv weights `[C, C, 1, 1]` (diffusers keeps linear `[C, C]`).
- Text encoder 1 (CLIP ViT-L): `conditioner.embedders.0.transformer.text_model.*`, always
  with the `text_model.` prefix (recent transformers save it without; ComfyUI needs it).
- Text encoder 2 (OpenCLIP bigG): `conditioner.embedders.1.model.*`, q/k/v fused into
  `attn.in_proj_weight`/`in_proj_bias`, `text_projection` transposed.

`position_ids` and `logit_scale` (optional in published files, unused by every loader) are
not written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tagtune.core.errors import ModelFileError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."

# Whole-prefix renames that do not depend on the block layout.
UNET_FIXED: dict[str, str] = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
# Inside a U-Net resnet block.
UNET_RESNET_RENAMES: dict[str, str] = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}

VAE_FIXED: dict[str, str] = {
    "encoder.conv_norm_out.": "encoder.norm_out.",
    "decoder.conv_norm_out.": "decoder.norm_out.",
    "encoder.conv_in.": "encoder.conv_in.",
    "encoder.conv_out.": "encoder.conv_out.",
    "decoder.conv_in.": "decoder.conv_in.",
    "decoder.conv_out.": "decoder.conv_out.",
    "quant_conv.": "quant_conv.",
    "post_quant_conv.": "post_quant_conv.",
}
VAE_RESNET_RENAMES: dict[str, str] = {"conv_shortcut.": "nin_shortcut."}
VAE_ATTENTION_RENAMES: dict[str, str] = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}

# OpenCLIP names for a transformers CLIP text model (without the `text_model.` prefix).
TE2_FIXED: dict[str, str] = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
TE2_LAYER_RENAMES: dict[str, str] = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
TE2_QKV = ("q_proj", "k_proj", "v_proj")

# Present in some files, used by no loader: dropped on export, ignored on load.
IGNORED_SUFFIXES = ("position_ids", "logit_scale")


def _rename(suffix: str, renames: Mapping[str, str]) -> str:
    for old, new in renames.items():
        if suffix.startswith(old):
            return new + suffix[len(old) :]
    return suffix


def unet_block_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(diffusers prefix, LDM prefix, inner renames) for every U-Net block, from its config.

    LDM numbers blocks flat: input block 0 is conv_in, then per level `layers_per_block`
    resnet(+attention) blocks and one downsampler; output blocks have one more layer per level.
    """
    levels = len(config["block_out_channels"])
    per = config["layers_per_block"]
    rows: list[tuple[str, str, dict[str, str]]] = []
    for i in range(levels):
        for j in range(per):
            n = 1 + i * (per + 1) + j
            rows.append(
                (f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0.", UNET_RESNET_RENAMES)
            )
            rows.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1.", {}))
        if i < levels - 1:
            n = (i + 1) * (per + 1)
            rows.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{n}.0.op.", {}))
    rows.append(("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET_RENAMES))
    rows.append(("mid_block.attentions.0.", "middle_block.1.", {}))
    rows.append(("mid_block.resnets.1.", "middle_block.2.", UNET_RESNET_RENAMES))
    for i, block_type in enumerate(config["up_block_types"]):
        for j in range(per + 1):
            n = i * (per + 1) + j
            rows.append(
                (f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0.", UNET_RESNET_RENAMES)
            )
            rows.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1.", {}))
        if i < levels - 1:
            n = i * (per + 1) + per
            slot = 2 if block_type.startswith("CrossAttn") else 1
            rows.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{n}.{slot}.", {}))
    rows.extend((old, new, {}) for old, new in UNET_FIXED.items())
    return rows


def vae_block_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(diffusers prefix, LDM prefix, inner renames) for every VAE block, from its config.

    The decoder's `up_blocks.i` is LDM's `up.{levels-1-i}` (LDM counts from the output side).
    """
    levels = len(config["block_out_channels"])
    per = config["layers_per_block"]
    res = VAE_RESNET_RENAMES
    rows: list[tuple[str, str, dict[str, str]]] = []
    for i in range(levels):
        k = levels - 1 - i
        for j in range(per + 1):  # the decoder has one resnet more per level than the encoder
            rows.append(
                (f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", res)
            )
            rows.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{k}.block.{j}.", res))
        rows.append(
            (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.", {})
        )
        rows.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{k}.upsample.", {}))
    for part in ("encoder", "decoder"):
        for r in range(2):
            rows.append((f"{part}.mid_block.resnets.{r}.", f"{part}.mid.block_{r + 1}.", res))
        rows.append(
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTENTION_RENAMES)
        )
    rows.extend((old, new, {}) for old, new in VAE_FIXED.items())
    return rows


def _map_by_prefix(key: str, rows: list[tuple[str, str, dict[str, str]]]) -> str | None:
    for old, new, renames in rows:
        if key.startswith(old):
            return new + _rename(key[len(old) :], renames)
    return None


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict:
    """diffusers U-Net state dict -> `model.diffusion_model.*` tensors (same tensor objects)."""
    rows = unet_block_prefixes(config)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _map_by_prefix(key, rows)
        if new is None:
            raise ModelFileError("U-Net tensor has no single-file name", field=key)
        out[UNET_PREFIX + new] = value
    return out


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict:
    """diffusers VAE state dict -> `first_stage_model.*` tensors; mid attention becomes 1x1 conv."""
    rows = vae_block_prefixes(config)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _map_by_prefix(key, rows)
        if new is None:
            raise ModelFileError("VAE tensor has no single-file name", field=key)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[VAE_PREFIX + new] = value
    return out


def _strip_text_model(key: str) -> str:
    return key.removeprefix("text_model.")


def te1_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """transformers CLIPTextModel state dict (with or without `text_model.`) -> single-file names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        out[f"{TE1_PREFIX}text_model.{_strip_text_model(key)}"] = value
    return out


def te2_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """transformers CLIPTextModelWithProjection state dict -> OpenCLIP single-file names.

    q/k/v projections are concatenated (in that order) into `in_proj_weight`/`in_proj_bias`;
    `text_projection` is the transpose of transformers' `text_projection.weight`.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        if key == "text_projection.weight":
            out[TE2_PREFIX + "text_projection"] = value.t().contiguous()
            continue
        k = _strip_text_model(key)
        if k in TE2_FIXED:
            out[TE2_PREFIX + TE2_FIXED[k]] = value
            continue
        if not k.startswith("encoder.layers."):
            raise ModelFileError("text encoder 2 tensor has no single-file name", field=key)
        idx, _, rest = k[len("encoder.layers.") :].partition(".")
        base = f"{TE2_PREFIX}transformer.resblocks.{idx}."
        proj, _, kind = rest.removeprefix("self_attn.").partition(".")
        if rest.startswith("self_attn.") and proj in TE2_QKV:
            qkv.setdefault(f"{base}attn.in_proj_{kind}", {})[proj] = value
            continue
        out[base + _rename(rest, TE2_LAYER_RENAMES)] = value
    for name, parts in qkv.items():
        if set(parts) != set(TE2_QKV):
            raise ModelFileError("text encoder 2 attention lacks q, k or v", field=name)
        out[name] = torch.cat([parts[p] for p in TE2_QKV], dim=0)
    return out


def vae_diffusers_to_ldm_unprefixed(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict:
    """Like `vae_to_ldm`, without the `first_stage_model.` prefix (bare VAE files)."""
    return {k.removeprefix(VAE_PREFIX): v for k, v in vae_to_ldm(state_dict, config).items()}
