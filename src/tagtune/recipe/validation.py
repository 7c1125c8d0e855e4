"""The recipe's `[validation]` table: which images are held out and when they are evaluated.

Kept beside `tagtune.recipe.model` (which includes it as `Recipe.validation`) with the same strict
rules: unknown keys and wrong types are errors, field docstrings are the documentation.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ValidationConfig(BaseModel):
    """Held-out images, never trained on in any stage, and the schedule of their evaluation.

    Size of the held-out set, from the captioned posts that are not excluded and have a
    cached latent: `subset` when set (capped at max_images), else `count`, else
    floor(share x posts), never more than half the posts nor max_images. Every evaluation uses the same noise and timesteps per image.
    """

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True, strict=True
    )

    enabled: bool = True
    """Hold out images and report the validation loss and the conditioning gap while training."""
    share: float = Field(default=0.05, ge=0, le=0.5)
    """Share of the posts held out, rounded down (5% holds out none of a collection under 20
    images); used when count is 0 and subset is empty."""
    count: int = Field(default=0, ge=0)
    """Held-out posts as a number instead of a share (0: use share); at most half the posts."""
    subset: str = ""
    """Held-out posts as a subset instead: "favorites" or a SQL WHERE over the posts table."""
    max_images: int = Field(default=64, ge=1)
    """Most images held out, however chosen (an evaluation runs 2 x timesteps rows per image)."""
    every_n_epochs: int = Field(default=1, ge=0)
    """Evaluate at each stage's start, after every N epochs and at its end (0: start and end)."""
    every_n_steps: int = Field(default=0, ge=0)
    """Also evaluate every N optimizer steps (0: off)."""
    timesteps: int = Field(default=4, ge=1, le=32)
    """Fixed timesteps per image, one drawn in each of N equal slices of [0, 1000)."""
    batch_size: int = Field(default=8, ge=1)
    """Rows (one image at one timestep with one caption) per evaluation forward pass."""
    seed: int = 0
    """Seed of the held-out choice and of its noise and timesteps; independent of train.seed,
    so runs with other training seeds are measured on the same images and draws."""

    @model_validator(mode="after")
    def _rules(self) -> ValidationConfig:
        if self.subset.strip() == "all":
            raise ValueError(
                'validation.subset "all" would hold out every post; use "favorites", a WHERE '
                "clause, or share / count"
            )
        if self.count > self.max_images:
            raise ValueError(
                f"validation.count ({self.count}) exceeds validation.max_images ({self.max_images})"
            )
        return self

    @property
    def active(self) -> bool:
        """True when the settings ask for a held-out set at all."""
        return self.enabled and bool(self.share or self.count or self.subset.strip())
