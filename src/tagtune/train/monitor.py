"""What a user watches during training: a rich progress bar and TensorBoard logs.

TensorBoard scalars: `loss`, `lr/<module>`, `images_per_s` per optimizer step; `val/loss`,
`val/loss_wrong_caption`, `val/conditioning_gap` and `val/seconds` per validation (all at the
stage's optimizer step).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


class Monitor:
    """Progress bar (stage, epoch, step, loss, lr, s/it, ETA) and TensorBoard scalars.

    Only the main process shows and writes anything; `progress=False` keeps tests quiet.
    """

    def __init__(self, log_dir: Path | None, enabled: bool = True, progress: bool = True) -> None:
        self.enabled = enabled
        self.writer = None
        self.bar = None
        self.task = None
        self.last = time.perf_counter()
        if not enabled:
            return
        self.log_dir = log_dir  # TensorBoard's writer opens in `start`
        if progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=False,
            )

    def start(self, stage: str, total: int, done: int) -> None:
        """Begin a stage of `total` steps, `done` of them already done (resume).

        A resumed stage's log starts by purging what a killed run logged after step `done`
        (TensorBoard drops earlier events from step `done + 1` on), so each step appears
        once, with the values of the run that continued.
        """
        self.last = time.perf_counter()
        if self.enabled and self.log_dir is not None and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            purge = done + 1 if done else None
            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(stage, total=total, completed=done, info="")

    def step(self, step: int, epoch: int, loss: float, lrs: dict[str, float], images: int) -> None:
        """Record one optimizer step."""
        if not self.enabled:
            return
        t = time.perf_counter()
        dt, self.last = t - self.last, t
        if self.writer is not None:
            self.writer.add_scalar("loss", loss, step)
            for name, lr in lrs.items():
                self.writer.add_scalar(f"lr/{name}", lr, step)
            self.writer.add_scalar("images_per_s", images / max(dt, 1e-9), step)
        if self.bar is not None and self.task is not None:
            lr = next(iter(lrs.values()), 0.0)
            info = f"epoch {epoch} step {step} loss {loss:.4f} lr {lr:.2e} {dt:.2f} s/it"
            self.bar.update(self.task, completed=step, info=info)

    def validation(self, evaluation: dict[str, Any]) -> None:
        """Record one validation (see `tagtune.train.validation`): scalars and a printed line."""
        if not self.enabled:
            return
        step = evaluation["step"]
        if self.writer is not None:
            for key in ("loss", "loss_wrong_caption", "conditioning_gap", "seconds"):
                if evaluation.get(key) is not None:
                    self.writer.add_scalar(f"val/{key}", evaluation[key], step)
        if self.bar is not None:
            from tagtune.train.validation import describe

            self.bar.console.print(describe(evaluation), soft_wrap=True)
        self.last = time.perf_counter()  # the next step's s/it leaves the evaluation out

    def close(self) -> None:
        """Stop the bar and flush the logs."""
        if self.bar is not None:
            self.bar.stop()
        if self.writer is not None:
            self.writer.close()
