"""The report's Runs section: per run and stage, what run.json records and TensorBoard logged.

run.json (`WS/runs/<run>/run.json`) gives each stage's status, sizes, time, resumes and, once
validation runs, its evaluations. Per-step loss and learning rates come from the stage's
TensorBoard event files, read with TensorBoard's own reader (it drops the steps a killed
run logged after its last state, so a resumed curve has no doubled stretch). Sample grids
are `<stage>/samples/epoch-NNN/grid.png`, shown as thumbnails side by side.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tagtune.report import charts
from tagtune.report.assets import Assets

RUN_FILE = "run.json"
MAX_POINTS = 2000
"""Points per curve kept by TensorBoard's reservoir sampling (the last one always kept)."""
GRID_SIDE = 320
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


@dataclass
class StageView:
    """One stage of a run as the page shows it."""

    name: str
    status: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    chart: str | None = None
    samples: list[tuple[str, str | None]] = field(default_factory=list)
    """(label, thumbnail URL) per epoch."""
    validation: list[dict[str, Any]] = field(default_factory=list)
    validation_images: int | None = None


@dataclass
class RunView:
    """One run: its record's totals and stages."""

    name: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    stages: list[StageView] = field(default_factory=list)
    problem: str = ""


def read_scalars(log_dir: Path, max_points: int = MAX_POINTS) -> dict[str, list[tuple]]:
    """Every scalar of a TensorBoard log folder: tag -> [(step, value, wall time)], by step."""
    if not Path(log_dir).is_dir():
        return {}
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: max_points})
    acc.Reload()
    return {
        tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)]
        for tag in acc.Tags().get(ea.SCALARS, [])
    }


def duration(seconds: float | None) -> str:
    """`1:02:03` style (hours may exceed 24)."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def count(value: Any) -> str:
    """A whole number with thousands separators; anything else as it is."""
    return f"{value:,}" if isinstance(value, int) else str(value if value is not None else "")


def _points(scalars: dict[str, list[tuple]], tag: str) -> list[tuple[int, float]]:
    return [(int(s), float(v)) for s, v, _ in scalars.get(tag, [])]


def _validation(entry: dict[str, Any], scalars: dict[str, list[tuple]]) -> list[dict[str, Any]]:
    """Evaluations from run.json, else rebuilt from the `val/*` scalars."""
    evaluations = (entry.get("validation") or {}).get("evaluations") or []
    if evaluations:
        return [e for e in evaluations if isinstance(e, dict) and "step" in e]
    rows: dict[int, dict[str, Any]] = {}
    for key in ("loss", "loss_wrong_caption", "conditioning_gap"):
        for step, value in _points(scalars, f"val/{key}"):
            rows.setdefault(step, {"step": step})[key] = value
    return [rows[s] for s in sorted(rows)]


def _series(evaluations: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [
        (int(e["step"]), float(e[key])) for e in evaluations if isinstance(e.get(key), int | float)
    ]


def _seconds_per_step(loss: list[tuple]) -> float | None:
    """Recent seconds per step from the loss events' wall times (last 50 steps)."""
    recent = loss[-51:]
    if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
        return None
    return (recent[-1][2] - recent[0][2]) / (recent[-1][0] - recent[0][0])


def _samples(stage_dir: Path, assets: Assets) -> list[tuple[str, str | None]]:
    out = []
    folders = sorted(
        (int(m.group(1)), p)
        for p in (stage_dir / "samples").glob("epoch-*")
        if (m := _EPOCH_DIR.match(p.name)) and (p / "grid.png").is_file()
    )
    for epoch, folder in folders:
        grid = folder / "grid.png"
        key = f"{grid}|{grid.stat().st_mtime_ns}|{GRID_SIDE}"
        url = assets.image("grid", key, lambda g=grid: _shrunk(g), label=str(grid))
        out.append((f"epoch {epoch}", url))
    return out


def _shrunk(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
    im.thumbnail((GRID_SIDE, GRID_SIDE))
    return im


def stage_view(run_dir: Path, entry: dict[str, Any], assets: Assets) -> StageView:
    """Facts, curves and sample grids of one stage entry of run.json."""
    name = str(entry.get("name", "?"))
    stage_dir = run_dir / name
    view = StageView(name=name, status=str(entry.get("status", "?")))
    scalars = read_scalars(stage_dir / "logs")
    loss = scalars.get("loss", [])
    total = int(entry.get("steps") or 0)
    per_epoch = int(entry.get("steps_per_epoch") or 0)
    done = total if view.status == "complete" else (int(loss[-1][0]) if loss else 0)
    seconds = entry.get("seconds")
    if view.status == "complete" and done:
        per_step = float(seconds or 0) / done
    else:
        per_step = _seconds_per_step(loss)
    resumes = [r for r in entry.get("resumes") or [] if isinstance(r, dict) and "step" in r]
    view.facts = [
        ("subset", str(entry.get("subset", ""))),
        ("images", count(entry.get("images"))),
        ("epochs", str(entry.get("epochs", ""))),
        ("batch size", str(entry.get("batch_size", ""))),
        ("steps", f"{done:,} of {total:,}"),
        ("time", duration(seconds)),
        ("s/it", f"{per_step:.3f}" if per_step else ""),
        ("final loss", f"{entry['final_loss']:.5f}" if entry.get("final_loss") is not None else ""),
        ("started", str(entry.get("started_at") or "")),
        ("finished", str(entry.get("finished_at") or "")),
        ("resumed", ", ".join(f"from step {r['step']} at {r.get('at', '?')}" for r in resumes)),
    ]
    if view.status == "running" and per_step and total > done:
        view.facts.append(("remaining (estimate)", duration(per_step * (total - done))))
    view.facts = [(k, v) for k, v in view.facts if v]
    validation = entry.get("validation") or {}
    view.validation = _validation(entry, scalars)
    view.validation_images = validation.get("images") if isinstance(validation, dict) else None
    curves = charts.Curves(
        loss=_points(scalars, "loss"),
        lrs={
            tag.removeprefix("lr/"): _points(scalars, tag)
            for tag in scalars
            if tag.startswith("lr/")
        },
        val_loss=_series(view.validation, "loss"),
        val_wrong=_series(view.validation, "loss_wrong_caption"),
        gap=_series(view.validation, "conditioning_gap"),
        resumes=[int(r["step"]) for r in resumes],
        epoch_steps=[per_epoch * k for k in range(1, int(entry.get("epochs") or 0))]
        if per_epoch
        else [],
        total_steps=total,
    )
    if curves.loss or curves.val_loss:
        view.chart = assets.chart(charts.stage_chart(curves, f"stage {name}"))
    view.samples = _samples(stage_dir, assets)
    return view


def run_view(run_dir: Path, assets: Assets) -> RunView:
    """One run folder: its run.json (a broken one is shown as a problem, not raised)."""
    view = RunView(name=run_dir.name)
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("stages"), list):
            raise ValueError("no list of stages")
        stages = record["stages"]
    except (OSError, ValueError) as exc:
        view.problem = f"run.json unreadable: {exc}"
        return view
    totals = record.get("totals") if isinstance(record.get("totals"), dict) else {}
    view.facts = [
        ("created", str(record.get("created_at", ""))),
        ("updated", str(record.get("updated_at", ""))),
        ("base model", str((record.get("base_model") or {}).get("path", ""))),
        ("steps (complete stages)", count(totals.get("steps"))),
        ("time (complete stages)", duration(totals.get("seconds"))),
    ]
    for entry in stages:
        if not isinstance(entry, dict):
            continue
        try:
            view.stages.append(stage_view(run_dir, entry, assets))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a hand-edited entry
            problem = [("problem", f"stage entry unreadable: {type(exc).__name__}: {exc}")]
            view.stages.append(StageView(str(entry.get("name")), "unreadable", problem))
    recorded = {s.name for s in view.stages}
    planned = ((record.get("recipe") or {}).get("train") or {}).get("stages") or []
    for st in planned:
        if isinstance(st, dict) and st.get("name") not in recorded:
            view.stages.append(StageView(name=str(st.get("name")), status="pending"))
    return view


def runs_section(runs_dir: Path, assets: Assets) -> list[RunView]:
    """Every run with a run.json, the most recently updated first."""
    folders = [p.parent for p in Path(runs_dir).glob(f"*/{RUN_FILE}")]
    folders.sort(key=lambda p: (-(p / RUN_FILE).stat().st_mtime, p.name))
    return [run_view(p, assets) for p in folders]
