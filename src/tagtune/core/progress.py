"""Progress of long work, for every verb: a live bar on a terminal, plain timed lines otherwise.

A live bar redraws one line with escape codes; written to a log file (nohup, CI, `> log`) it
shows nothing until the work ends. So when stderr is not a terminal, progress is printed as
plain lines instead, one every `TAGTUNE_PROGRESS_INTERVAL` seconds (default 30; also each
time another `percent_step` percent is done, when one is given), and one when a task that
printed lines (or ran longer than the interval) ends; a task done within the interval prints
nothing, so quick work leaves the log as it was:

    encoding: 120/480 (25%), 14.2 images/s, ETA 0:25
    main: 40/200 (20%), 1.52 s/it, ETA 4:03, epoch 1 step 40 loss 0.1234 lr 1.00e-04

`TAGTUNE_PROGRESS=bar|lines|off` overrides the choice. `Progress` speaks the part of
`rich.progress.Progress` the verbs use (`add_task`, `update`, `advance`, `remove_task`,
`print`), so a library function takes either.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

Unit = Literal["items", "images", "steps", "bytes"]
DEFAULT_INTERVAL_S = 30.0
"""Seconds between plain progress lines when `TAGTUNE_PROGRESS_INTERVAL` is not set."""
_CONTROL = {c: " " for c in (*range(32), 127)}


def progress_mode(stream: TextIO | None = None) -> str:
    """`bar`, `lines` or `off`: `TAGTUNE_PROGRESS` if set, else a bar only on a terminal."""
    mode = os.environ.get("TAGTUNE_PROGRESS", "").strip().lower()
    if mode in ("bar", "lines", "off"):
        return mode
    stream = stream or sys.stderr
    return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"


def progress_interval() -> float:
    """Seconds between plain lines: `TAGTUNE_PROGRESS_INTERVAL`, or 30 (bad values: 30)."""
    try:
        value = float(os.environ.get("TAGTUNE_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 else DEFAULT_INTERVAL_S


def format_duration(seconds: float) -> str:
    """`h:mm:ss` or `m:ss`, as an ETA is read."""
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _amount(n: float, unit: Unit) -> str:
    if unit != "bytes":
        return str(int(n))
    for size, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= size:
            return f"{n / size:.1f} {name}"
    return f"{int(n)} B"


def _rate(per_s: float, unit: Unit) -> str:
    if unit == "bytes":
        return f"{_amount(per_s, unit)}/s"
    if unit == "steps" or per_s < 1:
        return f"{1 / per_s:.2f} s/it" if per_s > 0 else "- s/it"
    return f"{per_s:.1f} {unit}/s"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    info: str
    started: float = field(default_factory=time.perf_counter)
    start_count: float = 0.0
    last_line: float = 0.0
    last_percent: int = 0
    last_completed: float = 0.0
    rich_id: Any = None


class Progress:
    """Progress of one or more tasks: rich bar (terminal), plain lines (logs) or nothing.

    `enabled=False` (or `--json`) prints nothing. `unit` names what is counted; `bytes`
    prints sizes. `interval_s` and `percent_step` set how often plain lines come.
    """

    def __init__(
        self,
        enabled: bool = True,
        unit: Unit = "items",
        interval_s: float | None = None,
        percent_step: int | None = None,
        stream: TextIO | None = None,
        transient: bool = True,
    ) -> None:
        self.stream = stream or sys.stderr
        self.mode = progress_mode(self.stream) if enabled else "off"
        self.unit = unit
        self.interval_s = progress_interval() if interval_s is None else interval_s
        self.percent_step = percent_step
        self.tasks: dict[int, _Task] = {}
        self._ids = 0
        self._lock = threading.Lock()
        self.bar = self._rich_bar(transient) if self.mode == "bar" else None

    def _rich_bar(self, transient: bool) -> Any:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        count = MofNCompleteColumn() if self.unit != "bytes" else TextColumn("")
        return RichProgress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            count,
            TextColumn("{task.fields[rate]}", markup=False),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}", markup=False),
            console=Console(file=self.stream, highlight=False, markup=False),
            transient=transient,
        )

    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Show the bar (terminal); plain lines need no start."""
        if self.bar is not None:
            self.bar.start()

    def stop(self) -> None:
        """End every task (a last plain line each) and stop the bar."""
        for task_id in list(self.tasks):
            self._end(task_id)
        if self.bar is not None:
            self.bar.stop()

    def add_task(
        self, description: str, total: float | None = None, completed: float = 0, info: str = ""
    ) -> int:
        """Start a task of `total` units (None: unknown), `completed` of them already done."""
        with self._lock:
            self._ids += 1
            task_id = self._ids
            now = time.perf_counter()
            self.tasks[task_id] = _Task(
                description.translate(_CONTROL), total, completed, info, now, completed, now
            )
            self.tasks[task_id].last_completed = completed
        if self.bar is not None:
            self.tasks[task_id].rich_id = self.bar.add_task(
                description, total=total, completed=completed, info=info, rate=""
            )
        return task_id

    def update(
        self,
        task_id: int,
        completed: float | None = None,
        advance: float | None = None,
        total: float | None = None,
        description: str | None = None,
        info: str | None = None,
    ) -> None:
        """Set or advance a task's count (and total, description, info); maybe print a line."""
        task = self.tasks.get(task_id)
        if task is None:
            return
        with self._lock:
            if total is not None:
                task.total = total
            if description is not None:
                task.description = description.translate(_CONTROL)
            if info is not None:
                task.info = info
            if completed is not None:
                task.completed = completed
            if advance:
                task.completed += advance
        if self.bar is not None:
            self.bar.update(
                task.rich_id,
                completed=task.completed, total=task.total, description=task.description,
                info=task.info, rate=self._rate_text(task),
            )  # fmt: skip
        elif self.mode == "lines" and self._due(task):
            self._line(task)

    def advance(self, task_id: int, advance: float = 1) -> None:
        """Add `advance` units to a task."""
        self.update(task_id, advance=advance)

    def remove_task(self, task_id: int) -> None:
        """End a task (its last plain line) and take it off the bar."""
        self._end(task_id)

    def print(self, line: str) -> None:
        """Print a message above the bar, or as a plain line."""
        if self.mode == "off":
            return
        if self.bar is not None:
            self.bar.console.print(line, soft_wrap=True)
        else:
            self._write(line.translate(_CONTROL))

    def _end(self, task_id: int) -> None:
        task = self.tasks.pop(task_id, None)
        if task is None:
            return
        if self.bar is not None:
            self.bar.remove_task(task.rich_id)
        elif (
            self.mode == "lines" and task.completed != task.last_completed and self._followed(task)
        ):
            self._line(task)  # where a task the log followed ended

    def _followed(self, task: _Task) -> bool:
        """Whether the log showed this task (a line before, or one due now)."""
        return task.last_line > task.started or self._due(task)

    def _percent(self, task: _Task) -> int | None:
        if not task.total:
            return None
        return int(100 * min(task.completed / task.total, 1.0))

    def _due(self, task: _Task) -> bool:
        now = time.perf_counter()
        if now - task.last_line >= self.interval_s:
            return True
        pct = self._percent(task)
        if pct is None or not self.percent_step:
            return False
        return pct // self.percent_step > task.last_percent // self.percent_step

    def _rate_text(self, task: _Task) -> str:
        elapsed = time.perf_counter() - task.started
        done = task.completed - task.start_count
        return _rate(done / elapsed, self.unit) if done > 0 and elapsed > 0 else ""

    def _text(self, task: _Task) -> str:
        parts = [f"{task.description}: {_amount(task.completed, self.unit)}"]
        pct = self._percent(task)
        if task.total:
            parts[0] += f"/{_amount(task.total, self.unit)} ({pct}%)"
        elapsed = time.perf_counter() - task.started
        done = task.completed - task.start_count
        if done > 0 and elapsed > 0:
            parts.append(_rate(done / elapsed, self.unit))
            if task.total:
                left = max(task.total - task.completed, 0) * elapsed / done
                parts.append(f"ETA {format_duration(left)}")
        if task.info:
            parts.append(task.info.translate(_CONTROL))
        return ", ".join(parts)

    def _line(self, task: _Task) -> None:
        task.last_line = time.perf_counter()
        task.last_percent = self._percent(task) or 0
        task.last_completed = task.completed
        self._write(self._text(task))

    def _write(self, text: str) -> None:
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()
