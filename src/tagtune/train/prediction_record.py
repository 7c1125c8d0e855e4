"""What a run was trained to predict, in its run.json, and the rule that keeps it one thing.

A v-prediction run records `prediction` ({prediction_type, zero_terminal_snr}); an epsilon
run writes nothing new, so its record is as it always was (no key means epsilon). A run
whose stages were trained as one is not continued as another: the weights would mix two
targets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tagtune.core.errors import TrainingError
from tagtune.models.prediction import Prediction
from tagtune.train import records as rec

EPSILON_RECORD = {"prediction_type": "epsilon", "zero_terminal_snr": False}


def check_same_prediction(record: dict[str, Any], prediction: Prediction, run_dir: Path) -> None:
    """A TrainingError when the record's stages were trained as another prediction type."""
    if not record.get("stages"):
        return
    before = record.get("prediction") or EPSILON_RECORD
    if before != prediction.to_json():
        then = Prediction(before["prediction_type"], before["zero_terminal_snr"]).label()
        raise TrainingError(
            f"the run was trained as {then}, the recipe and base now give {prediction.label()}",
            file=run_dir / rec.RUN_FILE, field="model.prediction_type",
            hint="restore model.prediction_type / model.zero_terminal_snr, or start a new run "
            "(train.run)",
        )  # fmt: skip


def record_prediction(record: dict[str, Any], prediction: Prediction, run_dir: Path) -> None:
    """Check the run against `prediction` (`check_same_prediction`), then record a v one."""
    check_same_prediction(record, prediction, run_dir)
    if prediction.is_v:
        record["prediction"] = prediction.to_json()
