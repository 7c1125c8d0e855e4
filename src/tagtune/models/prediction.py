"""What a model predicts (epsilon or v) and whether its noise schedule has zero terminal SNR.

The answer lives in the model's scheduler config (`prediction_type`,
`rescale_betas_zero_snr`, and `timestep_spacing = "trailing"` for zero-terminal-SNR models):
training, sampling and `save_diffusers` read it from there. A single file has no scheduler
config; it says the same thing with marker tensors and a header key:

- `v_pred` (any small tensor, written empty): ComfyUI's SDXL loader makes the model
  V_PREDICTION; `ztsnr` beside it turns on zero-terminal-SNR sampling. ComfyUI reads
  nothing else for this.
- `modelspec.prediction_type`: `epsilon` or `v` (the ModelSpec convention).

`read_file_claim` / `read_folder_claim` say what a base states (each part may be unknown),
`resolve` checks the recipe against it, `apply` writes the answer into a scheduler config,
`prediction_of` reads it back, `markers` gives the tensors an export carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tagtune.core.errors import RecipeError

EPSILON = "epsilon"
V_PREDICTION = "v_prediction"
PREDICTION_TYPES = (EPSILON, V_PREDICTION)
V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"
MARKER_KEYS = (V_PRED_KEY, ZTSNR_KEY)
"""Flags, not weights: top-level empty tensors, never part of a component."""
MODELSPEC_KEY = "modelspec.prediction_type"
MODELSPEC_VALUES = {EPSILON: "epsilon", V_PREDICTION: "v"}
"""Our prediction type -> the value ModelSpec writes (sd-scripts: `epsilon` or `v`)."""
_FROM_MODELSPEC = {
    "epsilon": EPSILON,
    "eps": EPSILON,
    "v": V_PREDICTION,
    "v_prediction": V_PREDICTION,
}
TRAILING = "trailing"


@dataclass(frozen=True)
class Prediction:
    """A model's prediction type (`epsilon` / `v_prediction`) and zero-terminal-SNR flag."""

    prediction_type: str = EPSILON
    zero_terminal_snr: bool = False

    @property
    def is_v(self) -> bool:
        """True for a v-prediction model."""
        return self.prediction_type == V_PREDICTION

    @property
    def modelspec_value(self) -> str:
        """`epsilon` or `v`, as `modelspec.prediction_type` writes it."""
        return MODELSPEC_VALUES[self.prediction_type]

    def label(self) -> str:
        """Short text for summaries and cards: `v_prediction, zero terminal SNR`."""
        return self.prediction_type + (", zero terminal SNR" if self.zero_terminal_snr else "")

    def to_json(self) -> dict[str, Any]:
        """The run.json form."""
        return {
            "prediction_type": self.prediction_type,
            "zero_terminal_snr": self.zero_terminal_snr,
        }


@dataclass(frozen=True)
class Claim:
    """What a base model states about itself: each part with the words that state it, or
    None where the base says nothing (then the recipe decides, `auto` meaning the default)."""

    prediction_type: str | None = None
    prediction_said_by: str = ""
    zero_terminal_snr: bool | None = None
    ztsnr_said_by: str = ""


def read_file_claim(tensor_names: Any, metadata: Mapping[str, str]) -> Claim:
    """What a single file states: its `v_pred` / `ztsnr` markers, else `modelspec.prediction_type`.

    Markers win over the header key: they are what ComfyUI loads the file by. A file with a
    `v_pred` marker and no `ztsnr` states "no zero terminal SNR" (ComfyUI samples it so).
    """
    names = set(tensor_names)
    if V_PRED_KEY in names:
        ztsnr = ZTSNR_KEY in names
        said = (
            f"has the {ZTSNR_KEY!r} marker"
            if ztsnr
            else f"has {V_PRED_KEY!r} but no {ZTSNR_KEY!r} marker"
        )
        return Claim(V_PREDICTION, f"has the {V_PRED_KEY!r} marker", ztsnr, said)
    ztsnr_claim = (True, f"has the {ZTSNR_KEY!r} marker") if ZTSNR_KEY in names else (None, "")
    raw = metadata.get(MODELSPEC_KEY)
    if raw is not None and raw.strip().lower() in _FROM_MODELSPEC:
        value = _FROM_MODELSPEC[raw.strip().lower()]
        return Claim(value, f"says {MODELSPEC_KEY} = {raw!r}", *ztsnr_claim)
    return Claim(None, "", *ztsnr_claim)


def read_folder_claim(scheduler_config: Mapping[str, Any]) -> Claim:
    """What a diffusers folder's scheduler config states (`prediction_type`,
    `rescale_betas_zero_snr`); a key it does not have states nothing."""
    where = "scheduler/scheduler_config.json"
    value = scheduler_config.get("prediction_type")
    ztsnr = scheduler_config.get("rescale_betas_zero_snr")
    return Claim(
        value if value in PREDICTION_TYPES else None,
        f"{where} says prediction_type = {value!r}" if value in PREDICTION_TYPES else "",
        ztsnr if isinstance(ztsnr, bool) else None,
        f"{where} says rescale_betas_zero_snr = {ztsnr}" if isinstance(ztsnr, bool) else "",
    )


def resolve(
    prediction_type: str, zero_terminal_snr: bool | str, claim: Claim, base: str, recipe: str = ""
) -> Prediction:
    """The recipe's `model.prediction_type` / `model.zero_terminal_snr` (`auto` = what the base
    states, epsilon / false where it states nothing) checked against the base.

    A recipe value that contradicts the base is a RecipeError in one line naming both; so is
    zero terminal SNR with epsilon (at the last timestep the input is pure noise and an
    epsilon prediction says nothing about the image).
    """
    kind = (claim.prediction_type or EPSILON) if prediction_type == "auto" else prediction_type
    if claim.prediction_type is not None and kind != claim.prediction_type:
        raise RecipeError(
            f"contradicts the base: {base} {claim.prediction_said_by}",
            file=recipe or None,
            field="model.prediction_type",
            value=prediction_type,
            hint='set it to "auto" to follow the base',
        )
    if zero_terminal_snr == "auto":
        ztsnr = bool(claim.zero_terminal_snr)
    else:
        ztsnr = bool(zero_terminal_snr)
        if claim.zero_terminal_snr is not None and ztsnr != claim.zero_terminal_snr:
            raise RecipeError(
                f"contradicts the base: {base} {claim.ztsnr_said_by}",
                file=recipe or None,
                field="model.zero_terminal_snr",
                value=ztsnr,
                hint='set it to "auto" to follow the base',
            )
    if ztsnr and kind != V_PREDICTION:
        raise RecipeError(
            f"zero terminal SNR needs a v-prediction model, and this one is {kind} "
            f"(model.prediction_type = {prediction_type!r})",
            file=recipe or None,
            field="model.zero_terminal_snr",
            value=ztsnr,
            hint='use it with model.prediction_type = "v_prediction"',
        )
    return Prediction(kind, ztsnr)


def apply(scheduler_config: Mapping[str, Any], prediction: Prediction) -> dict[str, Any]:
    """The scheduler config with `prediction`: prediction_type, rescale_betas_zero_snr and,
    for zero terminal SNR, trailing timestep spacing (so sampling starts at the last
    timestep, where the input is pure noise)."""
    config = dict(scheduler_config)
    config["prediction_type"] = prediction.prediction_type
    if prediction.zero_terminal_snr:
        config["rescale_betas_zero_snr"] = True
        config["timestep_spacing"] = TRAILING
    elif config.get("rescale_betas_zero_snr"):
        config["rescale_betas_zero_snr"] = False
    return config


def with_claim(scheduler_config: Mapping[str, Any], claim: Claim) -> dict[str, Any]:
    """The scheduler config with what the file states (`claim`) put in; unchanged where the
    file states nothing."""
    if claim.prediction_type is None and claim.zero_terminal_snr is None:
        return dict(scheduler_config)
    now = prediction_of(scheduler_config)
    ztsnr = claim.zero_terminal_snr
    return apply(
        scheduler_config,
        Prediction(
            claim.prediction_type or now.prediction_type,
            now.zero_terminal_snr if ztsnr is None else ztsnr,
        ),
    )


def prediction_of(scheduler_config: Mapping[str, Any]) -> Prediction:
    """The Prediction a scheduler config describes (epsilon, no rescale where it says nothing)."""
    kind = scheduler_config.get("prediction_type") or EPSILON
    if kind not in PREDICTION_TYPES:
        kind = EPSILON
    return Prediction(kind, bool(scheduler_config.get("rescale_betas_zero_snr")))


def components_prediction(components: Any) -> Prediction:
    """The Prediction of loaded components (from their scheduler config)."""
    return prediction_of(getattr(components, "scheduler_config", None) or {})


def markers(prediction: Prediction) -> dict[str, Any]:
    """The marker tensors a single file carries: `v_pred` (and `ztsnr`) for v-prediction,
    none for epsilon. Empty tensors, as ComfyUI writes them."""
    import torch

    if not prediction.is_v:
        return {}
    out = {V_PRED_KEY: torch.tensor([])}
    if prediction.zero_terminal_snr:
        out[ZTSNR_KEY] = torch.tensor([])
    return out
