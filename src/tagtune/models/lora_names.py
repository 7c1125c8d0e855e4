"""Kohya LoRA module names for an SDXL model, and which modules a kohya LoRA targets.

A kohya LoRA names each module it changes after the module's path, dots as underscores:
- U-Net: `lora_unet_` + the single-file (LDM) path after `model.diffusion_model.`
  (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`), derived from the
  diffusers <-> LDM tables of `tagtune.models.keys` (no second table here).
- Text encoders: `lora_te1_` / `lora_te2_` + the transformers path with its `text_model.`
  prefix (`lora_te1_text_model_encoder_layers_0_self_attn_q_proj`); encoder 2 keeps q/k/v
  split as transformers has them.

Targets follow sd-scripts' `networks/lora.py`: every Linear (and 1x1 conv) inside a U-Net
transformer block (`Transformer2DModel`: proj_in/out, attention q/k/v/out, feed-forward);
with `convs` (LoCon) also every conv and Linear of the resnets, downsamplers and upsamplers;
in the text encoders the attention q/k/v/out projections and the MLP's fc1/fc2 (the only
text-encoder modules ComfyUI maps).

Some trainers (diffusers-based ones) name U-Net modules after the diffusers path instead
(`lora_unet_down_blocks_1_attentions_0_...`); `lora_aliases` maps those too, for reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tagtune.core.errors import ModelFileError
from tagtune.models import keys

COMPONENTS: dict[str, str] = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}
"""LoRA component name -> SDXLComponents attribute."""
PREFIXES: dict[str, str] = {"unet": "lora_unet_", "te1": "lora_te1_", "te2": "lora_te2_"}

UNET_ATTENTION_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_TARGETS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "mlp.fc1",
    "mlp.fc2",
)

SDXL_UNET_LAYOUT: dict[str, Any] = {
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}
"""The parts of the SDXL U-Net config that decide single-file block numbers."""


def _layout_rows(unet_config: Mapping[str, Any] | None) -> list[tuple[str, str, dict[str, str]]]:
    layout = SDXL_UNET_LAYOUT if unet_config is None else unet_config
    return keys.unet_block_prefixes(layout)


def _unet_name(module_path: str, rows: list[tuple[str, str, dict[str, str]]]) -> str:
    ldm = keys.unet_ldm_key(module_path + ".weight", rows)
    if ldm is None:
        raise ModelFileError(
            "U-Net module has no single-file name", field="module_path", value=module_path
        )
    return PREFIXES["unet"] + ldm.removesuffix(".weight").replace(".", "_")


def _te_name(component: str, module_path: str) -> str:
    bare = module_path.removeprefix("text_model.")
    return PREFIXES[component] + "text_model_" + bare.replace(".", "_")


def kohya_name(
    component: str, module_path: str, *, unet_config: Mapping[str, Any] | None = None
) -> str:
    """The kohya LoRA name of one module of tagtune's loaded model.

    `component` is "unet", "te1" or "te2"; `module_path` the module's dotted path in the
    diffusers U-Net or transformers text encoder. U-Net names use the single-file block
    numbers of `unet_config` (default: SDXL's layout, which tagtune's tiny models share).
    """
    if component == "unet":
        return _unet_name(module_path, _layout_rows(unet_config))
    if component in ("te1", "te2"):
        return _te_name(component, module_path)
    raise ModelFileError(
        "unknown LoRA component", field="component", value=component, allowed="unet, te1, te2"
    )


def _is_target_layer(module: Any, convs: bool) -> bool:
    kind = type(module).__name__
    if kind in ("Linear", "LoRACompatibleLinear"):
        return True
    if kind in ("Conv2d", "LoRACompatibleConv"):
        return convs or tuple(module.kernel_size) == (1, 1)
    return False


def _unet_targets(unet: Any, convs: bool) -> dict[str, tuple[str, str]]:
    blocks = UNET_ATTENTION_BLOCKS + (UNET_CONV_BLOCKS if convs else ())
    rows = _layout_rows(unet.config)
    out: dict[str, tuple[str, str]] = {}
    for name, block in unet.named_modules():
        if type(block).__name__ not in blocks:
            continue
        for child, module in block.named_modules():
            if child and _is_target_layer(module, convs):
                path = f"{name}.{child}"
                out[_unet_name(path, rows)] = ("unet", path)
    return out


def _te_targets(component: str, encoder: Any) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for path, module in encoder.named_modules():
        if type(module).__name__ == "Linear" and path.endswith(TE_TARGETS) and ".layers." in path:
            out[_te_name(component, path)] = (component, path)
    return out


def lora_targets(
    components: Any, *, unet: bool = True, text_encoders: bool = True, convs: bool = False
) -> dict[str, tuple[str, str]]:
    """Every module a kohya LoRA can target in this model: kohya name -> (component, path).

    `components` is an SDXLComponents (or anything with `unet`, `text_encoder`,
    `text_encoder_2`); a part that is None is skipped. `convs` adds the LoCon targets.
    """
    out: dict[str, tuple[str, str]] = {}
    if unet and components.unet is not None:
        out.update(_unet_targets(components.unet, convs))
    if text_encoders:
        for component in ("te1", "te2"):
            encoder = getattr(components, COMPONENTS[component])
            if encoder is not None:
                out.update(_te_targets(component, encoder))
    return out


def lora_aliases(targets: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """Other names trainers give the same U-Net modules -> the kohya name, for reading.

    diffusers-based trainers write `lora_unet_` + the diffusers path (dots as underscores).
    """
    return {
        PREFIXES["unet"] + path.replace(".", "_"): name
        for name, (component, path) in targets.items()
        if component == "unet"
    }
