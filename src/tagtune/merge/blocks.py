"""Which merge weight each tensor of a single-file SDXL checkpoint takes (data, not code paths).

The 20 block weights follow supermerger's SDXL convention, so presets users already have
give the same model: BASE, IN00-IN08, M00, OUT00-OUT08. In the original key layout:

- `model.diffusion_model.time_embed.*` and `...label_emb.*` go with IN00;
- `...input_blocks.N.*` is IN0N, `...middle_block.*` is M00, `...output_blocks.N.*` is OUT0N;
- the final `...out.*` goes with OUT08;
- everything else (both text encoders, the VAE, anything outside the U-Net) is BASE.
"""

from __future__ import annotations

import re

from tagtune.core.errors import InputError

UNET_PREFIX = "model.diffusion_model."
TEXT_ENCODER_PREFIXES = ("conditioner.embedders.0.", "conditioner.embedders.1.")
VAE_PREFIX = "first_stage_model."

BLOCK_NAMES: tuple[str, ...] = (
    "BASE",
    *(f"IN{i:02d}" for i in range(9)),
    "M00",
    *(f"OUT{i:02d}" for i in range(9)),
)
BLOCK_INDEX = {name: i for i, name in enumerate(BLOCK_NAMES)}

# U-Net sub-prefix -> block name; numbered blocks are matched by _NUMBERED below
UNET_FIXED: dict[str, str] = {
    "time_embed.": "IN00",
    "label_emb.": "IN00",
    "middle_block.": "M00",
    "out.": "OUT08",
}
_NUMBERED = re.compile(r"(input|output)_blocks\.(\d+)\.")
_NUMBERED_NAME = {"input": "IN", "output": "OUT"}


def part_of(key: str) -> str:
    """Which model a tensor belongs to: unet, text_encoder, vae or other."""
    if key.startswith(UNET_PREFIX):
        return "unet"
    if key.startswith(TEXT_ENCODER_PREFIXES):
        return "text_encoder"
    if key.startswith(VAE_PREFIX):
        return "vae"
    return "other"


def block_of(key: str) -> str:
    """The block-weight name (BASE, IN00..IN08, M00, OUT00..OUT08) of one tensor name.

    A numbered U-Net block outside SDXL's 0..8 (an SD 1.x checkpoint) is an InputError,
    since its preset would not mean what the user expects.
    """
    if not key.startswith(UNET_PREFIX):
        return "BASE"
    rest = key[len(UNET_PREFIX) :]
    for prefix, name in UNET_FIXED.items():
        if rest.startswith(prefix):
            return name
    m = _NUMBERED.match(rest)
    if m:
        name = f"{_NUMBERED_NAME[m.group(1)]}{int(m.group(2)):02d}"
        if name not in BLOCK_INDEX:
            raise InputError(
                "not an SDXL U-Net block (block weights need SDXL's 9 input and 9 output blocks)",
                field="tensor",
                value=key,
            )
        return name
    return "BASE"


def parse_blocks(text: str | list[float] | tuple[float, ...]) -> tuple[float, ...]:
    """20 comma-separated block weights (BASE, IN00..IN08, M00, OUT00..OUT08) as floats."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    if len(items) != len(BLOCK_NAMES):
        raise InputError(
            f"needs {len(BLOCK_NAMES)} block weights, got {len(items)}",
            field="--blocks",
            value=text,
            allowed=", ".join(BLOCK_NAMES),
        )
    try:
        return tuple(float(v) for v in items)
    except ValueError:
        raise InputError("block weights must be numbers", field="--blocks", value=text) from None
