"""The lines under `tagtune train`'s summary table: what "final loss" means, and where a
stage's samples, TensorBoard logs and states are."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

FINAL_LOSS_MEANING = "final loss: the mean training loss of the stage's last epoch"


def stage_places(run_dir: Path, stage: str) -> dict[str, str]:
    """Where a stage's outputs live: samples, TensorBoard logs, states (folders)."""
    folder = Path(run_dir) / stage
    return {
        "samples": str(folder / "samples"),
        "logs": str(folder / "logs"),
        "states": str(folder / "states"),
    }


def summary_lines(run_dir: Path, ran: list[dict[str, Any]]) -> list[str]:
    """What the summary table does not say: the meaning of its final loss, each stage's
    folders (samples only when it wrote some), and the command that opens TensorBoard."""
    if not ran:
        return []
    lines = [FINAL_LOSS_MEANING]
    for s in ran:
        places = stage_places(run_dir, s["name"])
        where = [f"states {places['states']} (final: {s['final_state']})"]
        if Path(places["samples"]).is_dir():
            where.insert(0, f"samples {places['samples']}")
        where.append(f"TensorBoard logs {places['logs']}")
        lines.append(f"{s['name']}: " + ", ".join(where))
    lines.append(f"open the logs: {shlex.join(['tensorboard', '--logdir', str(run_dir)])}")
    return lines
