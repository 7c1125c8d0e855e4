"""Recipe settings for samples, EMA and caption-group draws (`[train]` and `[[train.stages]]`).

Kept beside `tagtune.recipe.model`, whose `TrainConfig` and `StageConfig` include these tables'
fields, with the same strict rules: unknown keys and wrong types are errors, field
docstrings are the documentation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SIDE = 4096
"""Longest image side anything is made at (buckets, samples, `generate`): 16 megapixels."""
_STRICT = ConfigDict(
    extra="forbid",
    use_attribute_docstrings=True,
    validate_assignment=True,
    strict=True,
    allow_inf_nan=False,
)


class SampleSettings(BaseModel):
    """When and how samples are made during training, and with which prompts."""

    model_config = _STRICT

    sample_every_n_epochs: int = Field(default=0, ge=0)
    """Sample images from sample_prompts every N epochs (0: off)."""
    sample_prompts: list[str] = []
    """Prompts sampled during training."""
    sample_negative: str = "worst quality"
    """Negative prompt for training samples."""
    sample_steps: int = Field(default=28, ge=1)
    """Sampler steps for training samples."""
    sample_size: tuple[int, int] = Field(default=(1024, 1024), strict=False)
    """Width and height of training samples."""
    sample_prompts_file: str = ""
    """sd-scripts prompt file (relative to the workspace): one prompt a line, `#` comments,
    per-prompt options --n negative, --w/--h size, --d seed, --l CFG scale, --s steps,
    --ss sampler; sampled after `sample_prompts`."""
    sample_every_n_steps: int = Field(default=0, ge=0)
    """Also sample every N optimizer steps (0: off)."""
    sample_at_start: bool = False
    """Sample each stage's starting weights before its first step (the base, for comparison)."""
    sample_sampler: str = "euler"
    """Sampler of training samples, from `tagtune generate`'s table (euler_a, euler, dpmpp_2m, ...)."""
    sample_cfg_scale: float = Field(default=7.0, gt=0, le=30)
    """Classifier-free guidance scale of training samples."""

    @model_validator(mode="after")
    def _sample_size(self) -> SampleSettings:
        w, h = self.sample_size
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE) or w % 8 or h % 8:
            raise ValueError(
                f"train.sample_size: {w}x{h} is not two multiples of 8 from 8 to {MAX_SIDE}"
            )
        return self


class EmaSettings(BaseModel):
    """An exponential moving average of the trained weights, kept beside them."""

    model_config = _STRICT

    ema_decay: float = Field(default=0.0, ge=0, lt=1)
    """EMA decay per update (0: off; 0.999 to 0.9999 are usual); a stage may set its own.
    The first updates use min(decay, (1 + n) / (10 + n)) so the average leaves the start."""
    ema_every_n_steps: int = Field(default=1, ge=1)
    """Update the EMA every N optimizer steps."""
    ema_device: Literal["gpu", "cpu"] = "gpu"
    """Where the fp32 EMA weights live: "gpu" beside the trained weights (the training device),
    or "cpu" (saves 4 bytes per trained weight of GPU memory; each update copies the weights)."""


class StageDrawSettings(BaseModel):
    """Per-stage EMA decay and how caption groups bound tag shuffling and dropout."""

    model_config = _STRICT

    ema_decay: float | None = Field(default=None, ge=0, lt=1)
    """EMA decay of this stage (0: off; unset: train.ema_decay)."""
    shuffle_scope: Literal["general", "caption"] = "general"
    """Tags shuffled and dropped: "general" only the general group (the artist, copyright and
    character groups, or the first keep_tokens tags, stay in front; quality, rating and period
    tokens stay at the end), or "caption" every tag after keep_tokens (sd-scripts)."""
    protected_tags: list[str] = []
    """Tags tag_dropout never drops (as in the caption, or Danbooru names with underscores)."""
    protect_count_tags: bool = True
    """Never drop the person-count tags (caption.count_tags: 1girl, 2boys, ...)."""
