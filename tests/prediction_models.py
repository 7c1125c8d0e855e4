"""Tiny models that say what they predict, for the v-prediction tests of every folder."""

from __future__ import annotations

import copy
from pathlib import Path

from tagtune.models.prediction import Prediction, apply
from tagtune.models.save import save_single_file

V_ZTSNR = Prediction("v_prediction", True)


def as_model(tiny_sdxl, prediction: Prediction):
    """A copy of the tiny model whose scheduler config says `prediction`."""
    comps = copy.copy(tiny_sdxl)
    comps.scheduler_config = apply(tiny_sdxl.scheduler_config, prediction)
    return comps


def write_prediction_files(tiny_sdxl, root: Path) -> dict[str, Path]:
    """The tiny model as v + ztsnr, v and epsilon single files (fp16) under `root`."""
    out = {}
    for name, p in (
        ("v_ztsnr", V_ZTSNR),
        ("v", Prediction("v_prediction", False)),
        ("eps", Prediction()),
    ):
        out[name] = save_single_file(as_model(tiny_sdxl, p), root / f"{name}.safetensors")
    return out
