"""The TOML recipe (`tagtune.toml`): one strict, typed model of everything a run does.

The defaults reproduce the reference workflow in docs/design.md: the Danbooru caption rules,
stage `main` (26 epochs, AdamW8bit, U-Net 1e-5, text encoders 2e-6, cosine with restarts,
10% warm-up) and stage `favorites` (25 epochs, U-Net 1e-6, text encoders frozen but not
cached, constant, noise offset 0.0357). Unknown keys and wrong values are errors that name
the key, the value and what is allowed.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tagtune.core.errors import RecipeError
from tagtune.core.untrusted import read_regular
from tagtune.core.workspace import RECIPE_FILE
from tagtune.recipe.auto import AutoBool
from tagtune.recipe.errors import recipe_error
from tagtune.recipe.lora import LoraConfig, check_stage_method
from tagtune.recipe.migrate import SCHEMA_VERSION, migrate
from tagtune.recipe.train_extras import MAX_SIDE, EmaSettings, SampleSettings, StageDrawSettings
from tagtune.recipe.validation import ValidationConfig

MAX_RECIPE_BYTES = 4 * 1024 * 1024

TagGroup = Literal[
    "artist", "copyright", "character", "general", "meta", "quality", "rating", "period"
]
Optimizer = Literal["adamw8bit", "adamw", "adafactor"]
Scheduler = Literal["cosine_with_restarts", "cosine", "constant", "constant_with_warmup", "linear"]
MixedPrecision = Literal["bf16", "fp16", "no"]
SaveDtype = Literal["fp16", "bf16", "fp32"]


class Strict(BaseModel):
    """Base for every recipe table: unknown keys are errors, field docstrings are docs.

    Types are strict: `"yes"` is not a bool and `"26"` not an int (a quoted value is a
    mistake worth an error); integers are accepted for floats, lists for pairs and quoted
    dates for dates. Every float must be finite: TOML's `inf` and `nan` are refused.
    """

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        strict=True,
        allow_inf_nan=False,
    )


class ProjectConfig(Strict):
    name: str = "tagtune-sdxl"
    """Model name, used for the exported file, the ModelSpec title and the model card."""
    author: str = ""
    """Author shown in the ModelSpec metadata and the model card."""
    license: str = "Fair AI Public License 1.0-SD"
    """Licence of the published model (the reference workflow's)."""
    description: str = ""
    """One paragraph for the model card and the ModelSpec description."""


class ModelConfig(Strict):
    base: str = ""
    """Base model: a single-file SDXL .safetensors or a diffusers folder (relative to the workspace)."""
    vae: str = ""
    """Optional VAE baked into the base before training (single file or diffusers VAE folder)."""
    tokenizers: str = ""
    """Optional folder with tokenizer/ and tokenizer_2/; default: the base folder or the CLIP vocabulary."""
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = "auto"
    """What the U-Net predicts; "auto" reads it from the base (its `v_pred` marker or
    `modelspec.prediction_type`, a diffusers folder's scheduler config), else epsilon."""
    zero_terminal_snr: AutoBool = "auto"
    """Zero-terminal-SNR noise schedule (v-prediction only); "auto" reads it from the base
    (its `ztsnr` marker, a diffusers folder's `rescale_betas_zero_snr`), else false."""


class SafetyConfig(Strict):
    extra_blocked_tags: list[str] = []
    """Tags added to the always-blocked list (posts with them never enter training)."""
    extra_blocked_unless_general: list[str] = []
    """Tags added to the list blocked when the rating is s, q, e or missing."""


class IngestConfig(Strict):
    legacy_ratings: bool = False
    """Read pre-2022-05-22 Danbooru data, where rating `s` meant safe (today's g or s)."""
    max_image_pixels: int = Field(default=178_956_970, gt=0)
    """Larger images are refused as decompression bombs (Pillow's own default limit)."""
    min_image_side: int = Field(default=64, ge=1)
    """Images with a shorter side are recorded as problems and skipped."""
    caption_files: Literal["metadata-first", "prefer", "ignore"] = "metadata-first"
    """Caption files (kohya-style `NAME.txt` / `NAME.caption`) in a folder SOURCE: with
    `metadata-first` an image with a Danbooru metadata sidecar is that post and its caption
    file is not read, an image with only a caption file is a caption-file post; `prefer` makes
    the caption file win over a sidecar; `ignore` never reads caption files (an image without
    a sidecar is a `no-metadata` problem). Applies to images not yet in the catalog."""


class QualityBand(Strict):
    min: float | None = None
    """Lowest score of the band (inclusive); none for the last, open-ended band."""
    tag: str
    """Caption token for scores in [min, next band's min)."""


class PeriodBand(Strict):
    start: dt.date | None = Field(default=None, strict=False)
    """First calendar date of the band (inclusive); none for the oldest band."""
    tag: str
    """Caption token for post dates in [start, next band's start)."""


DEFAULT_COUNT_TAGS = [
    *[f"{n}girl" if n == 1 else f"{n}girls" for n in range(1, 6)],
    "6+girls",
    "multiple_girls",
    *[f"{n}boy" if n == 1 else f"{n}boys" for n in range(1, 6)],
    "6+boys",
    "multiple_boys",
    *[f"{n}other" if n == 1 else f"{n}others" for n in range(1, 6)],
    "6+others",
    "multiple_others",
]

KAOMOJI = [
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
    ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
]  # fmt: skip
"""Danbooru kaomoji tags (docs/design.md) that keep their underscores in captions."""


class CaptionConfig(Strict):
    order: list[TagGroup] = [
        "artist",
        "copyright",
        "character",
        "general",
        "quality",
        "rating",
        "period",
    ]
    """Field groups in caption order; leave one out to drop it ("meta" is off by default)."""
    count_tags: list[str] = DEFAULT_COUNT_TAGS
    """Person-count tags moved to the front of the general group (kept in alphabetical order)."""
    keep_underscores: list[str] = KAOMOJI
    """Tags whose underscores are kept (besides every tag of at most `underscore_max_len` characters)."""
    underscore_max_len: int = Field(default=3, ge=0)
    """Tags this short keep their underscores (kaomoji such as ^_^ or o_o)."""
    quality_bands: list[QualityBand] = [
        QualityBand(min=150, tag="masterpiece"),
        QualityBand(min=100, tag="best quality"),
        QualityBand(min=75, tag="great quality"),
        QualityBand(min=25, tag="medium quality"),
        QualityBand(min=0, tag="normal quality"),
        QualityBand(min=-5, tag="low quality"),
        QualityBand(min=None, tag="worst quality"),
    ]
    """Score bands [min, previous min), highest first; the last has no min."""
    ratings: dict[str, list[str]] = {
        "g": ["safe"],
        "s": ["sensitive"],
        "q": ["nsfw"],
        "e": ["nsfw", "explicit"],
    }
    """Caption tokens per Danbooru rating letter."""
    periods: list[PeriodBand] = [
        PeriodBand(start=dt.date(2021, 1, 1), tag="newest"),
        PeriodBand(start=dt.date(2018, 1, 1), tag="recent"),
        PeriodBand(start=dt.date(2015, 1, 1), tag="mid"),
        PeriodBand(start=dt.date(2011, 1, 1), tag="early"),
        PeriodBand(start=None, tag="oldest"),
    ]
    """Date bands [start, previous start) on the calendar date written in created_at, newest first."""
    escape_parentheses: bool = False
    """Escape ( and ) A1111-style; off for training captions, on for prompts."""
    separator: str = ", "
    """String between tags."""

    @model_validator(mode="after")
    def _bands_are_ordered(self) -> CaptionConfig:
        mins = [b.min for b in self.quality_bands]
        if not mins or mins[-1] is not None or any(m is None for m in mins[:-1]):
            raise ValueError(
                "caption.quality_bands: every band but the last needs a min; the last has none"
            )
        if any(a <= b for a, b in zip(mins[:-2], mins[1:-1], strict=True)):
            raise ValueError(f"caption.quality_bands: mins must decrease, got {mins[:-1]}")
        starts = [p.start for p in self.periods]
        if not starts or starts[-1] is not None or any(s is None for s in starts[:-1]):
            raise ValueError(
                "caption.periods: every band but the last needs a start; the last has none"
            )
        if any(a <= b for a, b in zip(starts[:-2], starts[1:-1], strict=True)):
            raise ValueError("caption.periods: starts must go from newest to oldest")
        unknown = sorted(set(self.ratings) - {"g", "s", "q", "e"})
        if unknown:
            raise ValueError(
                f"caption.ratings: unknown rating letter(s) {unknown} (allowed: g, s, q, e)"
            )
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"caption.order: a group appears twice in {self.order}")
        return self


class BucketConfig(Strict):
    resolution: int = Field(default=1024, ge=64, le=MAX_SIDE)
    """Buckets hold about resolution x resolution pixels."""
    min_side: int = Field(default=512, ge=64, le=MAX_SIDE)
    """Shortest bucket side in pixels."""
    max_side: int = Field(default=2048, ge=64, le=MAX_SIDE)
    """Longest bucket side in pixels."""
    step: int = Field(default=64, ge=8)
    """Bucket sides are multiples of this."""
    no_upscale: bool = False
    """Images smaller than their bucket go to a smaller bucket of the same shape instead of being upscaled."""
    random_crop: bool = False
    """Crop at a random offset (seeded) instead of the center."""
    flip: bool = False
    """Also cache a horizontally flipped latent per image (flip augmentation)."""

    @model_validator(mode="after")
    def _sides(self) -> BucketConfig:
        if self.min_side > self.max_side:
            raise ValueError(
                f"buckets.min_side ({self.min_side}) exceeds buckets.max_side ({self.max_side})"
            )
        for name in ("resolution", "min_side", "max_side"):
            if getattr(self, name) % self.step:
                raise ValueError(
                    f"buckets.{name} ({getattr(self, name)}) is not a multiple of buckets.step ({self.step})"
                )
        return self


class StageFields(Strict):
    name: str
    """Stage name; its outputs go to runs/<run>/<name>/."""
    method: Literal["full", "lora"] = "full"
    """How the stage trains: "full" every weight of each module with lr > 0, "lora" a LoRA."""
    lora: LoraConfig | None = None
    """The LoRA of a method = "lora" stage (defaults when omitted)."""
    subset: str = "all"
    """Posts to train on: "all", "favorites", or a SQL WHERE over the posts table."""
    epochs: int = Field(default=1, ge=1)
    """Passes over the subset."""
    repeats: int = Field(default=1, ge=1)
    """Times each image is seen per epoch; multiplies an image's own repeats (a kohya-style
    folder `10_mychar` gives 10: with repeats 2 such an image is seen 20 times)."""
    batch_size: int = Field(default=4, ge=1)
    """Images per optimizer step per process (before gradient accumulation)."""
    gradient_accumulation: int = Field(default=1, ge=1)
    """Batches accumulated before each optimizer step."""
    optimizer: Optimizer = "adamw8bit"
    """adamw8bit needs bitsandbytes and CUDA; adamw and adafactor run anywhere."""
    lr_unet: float = Field(default=1e-5, ge=0)
    """U-Net learning rate; 0 freezes the U-Net."""
    lr_text_encoder: float = Field(default=2e-6, ge=0)
    """Text encoder 1 (CLIP ViT-L) learning rate; 0 freezes it."""
    lr_text_encoder_2: float = Field(default=2e-6, ge=0)
    """Text encoder 2 (OpenCLIP ViT-bigG) learning rate; 0 freezes it."""
    weight_decay: float = Field(default=0.01, ge=0)
    """Decoupled weight decay (AdamW)."""
    max_grad_norm: float = Field(default=1.0, ge=0)
    """Gradient clipping norm; 0 turns clipping off."""
    scheduler: Scheduler = "cosine_with_restarts"
    """Learning-rate schedule after warm-up."""
    scheduler_cycles: int = Field(default=1, ge=1)
    """Hard restarts of cosine_with_restarts."""
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Warm-up as a share of the stage's optimizer steps (use this or warmup_steps)."""
    warmup_steps: int = Field(default=0, ge=0)
    """Warm-up in optimizer steps (use this or warmup_ratio)."""
    noise_offset: float = Field(default=0.0, ge=0)
    """Offset noise strength (0 turns it off)."""
    min_snr_gamma: float = Field(default=0.0, ge=0)
    """Min-SNR loss weighting gamma (0 turns it off; 5 is usual)."""
    shuffle_captions: bool = False
    """Shuffle the tags of each caption every time it is used (after keep_tokens)."""
    keep_tokens: int = Field(default=0, ge=0)
    """Leading tags kept in place when shuffling or dropping tags."""
    tag_dropout: float = Field(default=0.0, ge=0, lt=1)
    """Probability of dropping each tag (after keep_tokens)."""
    caption_dropout: float = Field(default=0.0, ge=0, lt=1)
    """Probability of training on an empty caption."""
    cache_text_encoder_outputs: bool = False
    """Cache text-encoder outputs; allowed only when both encoders are frozen and captions never change."""
    max_token_length: Literal[75, 150, 225] = 225
    """Caption tokens seen by the encoders, in 75-token chunks A1111-style."""

    @model_validator(mode="after")
    def _rules(self) -> StageFields:
        check_stage_method(self.name, self.method, self.lora)
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError(
                f"stage {self.name!r}: set warmup_ratio ({self.warmup_ratio}) or warmup_steps "
                f"({self.warmup_steps}), not both"
            )
        if self.cache_text_encoder_outputs:
            changing = [
                f"{k} = {getattr(self, k)}"
                for k in ("lr_text_encoder", "lr_text_encoder_2", "tag_dropout", "caption_dropout")
                if getattr(self, k)
            ] + (["shuffle_captions = true"] if self.shuffle_captions else [])
            if changing:
                raise ValueError(
                    f"stage {self.name!r}: cache_text_encoder_outputs needs frozen encoders and fixed "
                    f"captions, but {', '.join(changing)}"
                )
        return self

    @property
    def trains_text_encoders(self) -> bool:
        """True when either text encoder has a non-zero learning rate."""
        return self.lr_text_encoder > 0 or self.lr_text_encoder_2 > 0


class StageConfig(StageDrawSettings, StageFields):
    """One `[[train.stages]]` table: its own fields, then EMA and caption-draw settings."""


def reference_stages() -> list[StageConfig]:
    """The two stages of the reference workflow (docs/design.md), exactly."""
    return [
        StageConfig(
            name="main",
            subset="all",
            epochs=26,
            repeats=1,
            batch_size=4,
            optimizer="adamw8bit",
            lr_unet=1e-5,
            lr_text_encoder=2e-6,
            lr_text_encoder_2=2e-6,
            scheduler="cosine_with_restarts",
            warmup_ratio=0.1,
            noise_offset=0.0,
        ),
        StageConfig(
            name="favorites",
            subset="favorites",
            epochs=25,
            repeats=1,
            batch_size=4,
            optimizer="adamw8bit",
            lr_unet=1e-6,
            lr_text_encoder=0.0,
            lr_text_encoder_2=0.0,
            cache_text_encoder_outputs=False,
            scheduler="constant",
            warmup_ratio=0.0,
            noise_offset=0.0357,
        ),
    ]


class TrainFields(Strict):
    run: str = "run1"
    """Run name: outputs go to runs/<run>/."""
    seed: int = 42
    """Seed for data order, noise and sampling; a resumed run continues the same streams."""
    mixed_precision: MixedPrecision = "bf16"
    """bf16/fp16 need a CUDA GPU; "no" trains in fp32 (CPU)."""
    gradient_checkpointing: bool = True
    """Trade compute for memory in the U-Net and text encoders."""
    weight_dtype: Literal["fp32", "bf16"] = "bf16"
    """Dtype of the model weights while training: bf16 halves weights and gradients (the 24 GB-card
    setting, with adamw8bit and gradient_checkpointing; updates are rounded stochastically so small
    learning rates still move the weights); fp32 is exact and needs about 32 GiB for stage main."""
    fused_backward: bool = False
    """Adafactor only: step each parameter inside the backward pass so whole-model gradients are
    never held (24 GB cards); needs gradient_accumulation 1 and one process; clipping is per tensor."""
    save_every_n_epochs: int = Field(default=1, ge=1)
    """Write a resumable state after every N epochs."""
    save_every_n_steps: int = Field(default=0, ge=0)
    """Also write a resumable state every N optimizer steps (0: off)."""
    keep_last: int = Field(default=3, ge=1)
    """Resumable states kept per stage; older ones are pruned."""
    keep_states_of_completed_stages: Literal["final", "all"] = "final"
    """When a stage completes, keep only its final state ("final") or every kept state ("all")."""
    export_every_epoch: bool = False
    """Also export a single-file checkpoint with each epoch's state."""
    stages: list[StageConfig] = Field(default_factory=reference_stages)
    """Stages in the order they run; each starts from the previous stage's weights."""

    @model_validator(mode="after")
    def _unique_stages(self) -> TrainFields:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"train.stages: stage names must be unique, got {names}")
        return self


class TrainConfig(SampleSettings, EmaSettings, TrainFields):
    """The `[train]` table: run, precision, states and stages, then EMA and sample settings."""


class ExportConfig(Strict):
    dtype: SaveDtype = "fp16"
    """Tensor dtype of the exported single file."""
    clip_skip: int = Field(default=1, ge=1)
    """Recommended clip skip (A1111 numbering: 1 = SDXL's penultimate layer, the default)."""
    negative_prompt: str = "worst quality"
    """Recommended negative prompt for the model card."""
    resolution: tuple[int, int] = Field(default=(1024, 1024), strict=False)
    """Training resolution written to the ModelSpec metadata."""


class Recipe(Strict):
    schema_version: int = SCHEMA_VERSION
    """Recipe format version; older recipes are migrated on load."""
    project: ProjectConfig = ProjectConfig()
    model: ModelConfig = ModelConfig()
    safety: SafetyConfig = SafetyConfig()
    ingest: IngestConfig = IngestConfig()
    caption: CaptionConfig = CaptionConfig()
    buckets: BucketConfig = BucketConfig()
    train: TrainConfig = TrainConfig()
    validation: ValidationConfig = ValidationConfig()
    export: ExportConfig = ExportConfig()

    def stage(self, name: str) -> StageConfig:
        """The stage called `name`, or a RecipeError listing the stage names."""
        for s in self.train.stages:
            if s.name == name:
                return s
        raise RecipeError(
            "no such stage",
            field="train.stages",
            value=name,
            allowed=", ".join(s.name for s in self.train.stages),
        )


# --- loading ---------------------------------------------------------------------------


def parse_recipe(data: dict[str, Any], file: str | Path | None = None) -> Recipe:
    """Validate a recipe mapping (already parsed TOML) into a Recipe, migrating old versions."""
    data = migrate(dict(data), file)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise recipe_error(exc, Recipe, file) from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; a workspace folder means its tagtune.toml."""
    path = Path(path)
    if path.is_dir():
        path = path / RECIPE_FILE
    try:
        text = read_regular(path, MAX_RECIPE_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise RecipeError(
            "recipe not found", file=path, hint="run `tagtune init WS` first"
        ) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line})",
            file=path,
            hint="save the recipe as UTF-8",
        ) from None
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror or exc}", file=path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"not valid TOML: {exc}", file=path) from None
    return parse_recipe(data, path)
