"""Recipe profiles: the settings `tagtune init --profile NAME` starts from, as data.

A profile is a table of overrides on the recipe model's defaults (the reference workflow);
`stages` overrides the reference stages one by one, in order. `reference` changes nothing:
bf16 weights, 8-bit AdamW and gradient checkpointing, which fit a 24 GB card, so `24gb` is
an alias of it. `cpu-tiny` runs on a CPU with a tiny model (`tagtune tiny-model`): fp32,
AdamW, no mixed precision, no gradient checkpointing, 128 px buckets (the tiny model's native
size: U-Net sample_size 16 x 8), samples and export metadata to match, and short stages.
"""

from __future__ import annotations

from typing import Any

from tagtune.core.errors import RecipeError
from tagtune.recipe.model import Recipe

DEFAULT_PROFILE = "reference"

CPU_TINY: dict[str, Any] = {
    "buckets": {"resolution": 128, "min_side": 64, "max_side": 256, "step": 64},
    "train": {
        "mixed_precision": "no",
        "weight_dtype": "fp32",
        "gradient_checkpointing": False,
        "sample_size": [128, 128],
        "sample_steps": 8,
        "stages": [
            {"epochs": 2, "optimizer": "adamw", "batch_size": 2, "max_token_length": 75},
            {"epochs": 1, "optimizer": "adamw", "batch_size": 2, "max_token_length": 75},
        ],
    },
    "validation": {"timesteps": 2},
    "export": {"resolution": [128, 128], "dtype": "fp32"},
}

PROFILES: dict[str, dict[str, Any]] = {
    "reference": {},
    "24gb": {},  # the reference workflow already fits a 24 GB card
    "cpu-tiny": CPU_TINY,
}
"""Profile name -> overrides on the recipe's defaults."""


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    if isinstance(base, list) and isinstance(over, list) and all(isinstance(x, dict) for x in over):
        merged = [_merge(b, o) for b, o in zip(base, over, strict=False)]
        return merged + base[len(over) :] + over[len(base) :]
    return over


def profile_recipe(name: str | None = None) -> Recipe:
    """The recipe of profile `name` (default: the reference workflow), validated as any
    recipe is; an unknown name is a RecipeError listing the profiles."""
    name = name or DEFAULT_PROFILE
    if name not in PROFILES:
        raise RecipeError(
            "unknown profile", field="profile", value=name, allowed=", ".join(PROFILES)
        )
    data = _merge(Recipe().model_dump(mode="python"), PROFILES[name])
    return Recipe.model_validate(data, strict=False)
