"""A stage's `lora` table: the LoRA a `method = "lora"` stage trains instead of every weight.

Kept beside `tagtune.recipe.model` (which includes it as `StageConfig.lora`) with the same strict
rules: unknown keys and wrong types are errors, field docstrings are the documentation.
The learning rates stay the stage's own (`lr_unet`, `lr_text_encoder`, `lr_text_encoder_2`):
a LoRA is added to each module whose rate is above 0, and the others stay frozen.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

LoraTarget = Literal["attention", "feed_forward", "convs"]


class LoraConfig(BaseModel):
    """Rank, alpha, dropout and targets of a stage's LoRA (kohya's `networks.lora` layout).

    Targets, as sd-scripts' `networks.lora` names them: "attention" is every linear layer of
    the U-Net's transformer blocks but the feed-forward (q/k/v/out of both attentions and the
    blocks' proj_in/proj_out) and the text encoders' self-attention q/k/v/out; "feed_forward"
    the transformer feed-forward layers (U-Net ff, text encoders' mlp fc1/fc2); "convs" the
    U-Net's ResNet, downsampler and upsampler layers (LoCon), with conv_rank / conv_alpha for
    the 3x3 convolutions.
    """

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True, strict=True
    )

    rank: int = Field(default=16, ge=1, le=1024)
    """LoRA rank (kohya's network_dim): the width of each down/up pair."""
    alpha: float | None = Field(default=None, gt=0)
    """Scale numerator: each update is (alpha / rank) x up @ down; unset means alpha = rank."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on each LoRA's input while training (0 turns it off)."""
    targets: list[LoraTarget] = Field(default=["attention", "feed_forward"], min_length=1)
    """Which layers get a LoRA (see the table's description)."""
    conv_rank: int | None = Field(default=None, ge=1, le=1024)
    """Rank of the 3x3 convolutions with "convs" (kohya's conv_dim); unset means rank."""
    conv_alpha: float | None = Field(default=None, gt=0)
    """Alpha of the 3x3 convolutions with "convs"; unset means conv_rank."""
    dora: bool = False
    """Weight-decomposed LoRA (DoRA, peft's use_dora): trains and chains, but a kohya file
    cannot hold it, so `tagtune export` refuses a DoRA stage."""

    @property
    def scale_alpha(self) -> float:
        """alpha, or rank when unset."""
        return float(self.alpha if self.alpha is not None else self.rank)

    @property
    def conv_dims(self) -> tuple[int, float]:
        """(rank, alpha) of the 3x3 convolutions."""
        rank = self.conv_rank or self.rank
        alpha = self.conv_alpha if self.conv_alpha is not None else float(rank)
        return rank, float(alpha)


def stage_lora(stage: Any) -> LoraConfig | None:
    """The LoRA a stage trains (the defaults when its table is omitted), or None (full)."""
    if getattr(stage, "method", "full") != "lora":
        return None
    return stage.lora or LoraConfig()


def check_stage_method(name: str, method: str, lora: LoraConfig | None) -> None:
    """A `lora` table belongs to a LoRA stage: on a full stage it would be silently ignored."""
    if method != "lora" and lora is not None:
        raise ValueError(f'stage {name!r}: a [lora] table needs method = "lora" (it is {method!r})')
