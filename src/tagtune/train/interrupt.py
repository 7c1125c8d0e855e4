"""A training run stopped by Ctrl-C or SIGTERM: what was kept and how to go on.

`tagtune` turns SIGTERM (a scheduler's timeout, `docker stop`, `kill`) into the same
KeyboardInterrupt as Ctrl-C, so both stop a run the same way: the stage's run.json entry says
`interrupted` (not `failed`), the newest complete state stays where it is, and the command
exits with code 130 after saying which state was kept and the exact command that resumes.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from tagtune.train.state import latest_state, state_meta

INTERRUPTED_EXIT_CODE = 130
"""Exit code of `tagtune train` stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells use)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by the user or a signal; `message()` says what was kept and how to resume.

    A KeyboardInterrupt still, so code that handles Ctrl-C handles it too.
    """

    def __init__(self, stage: str, state: Path | None, step: int | None, resume: str) -> None:
        super().__init__(f"stage {stage!r} interrupted")
        self.stage = stage
        self.state = state
        self.step = step
        self.resume = resume

    def message(self) -> str:
        """Three lines: the stop, the state kept (path and step, or none), the resume command."""
        if self.state is None:
            kept = "no resumable state was kept; the stage starts again at step 0"
        else:
            kept = f"kept state {self.state} (step {self.step})"
        return f"training stopped: stage {self.stage!r} was interrupted\n{kept}\nresume with: {self.resume}"

    def to_json(self) -> dict[str, object]:
        """The same facts for `--json`."""
        return {
            "interrupted": True,
            "stage": self.stage,
            "state": None if self.state is None else str(self.state),
            "step": self.step,
            "resume": self.resume,
        }


def resume_command(workspace: Path, stage: str | None) -> str:
    """`tagtune train WS [--stage NAME] --resume`, quoted for a shell."""
    parts = ["tagtune", "train", str(workspace)]
    if stage is not None:
        parts += ["--stage", stage]
    return shlex.join([*parts, "--resume"])


def interrupted(
    workspace: Path, stage: str, states_dir: Path, only: str | None
) -> TrainingInterrupted:
    """The TrainingInterrupted of a stage stopped now: its newest complete state, if any."""
    state, _ = latest_state(states_dir)
    step = state_meta(state)["step"] if state is not None else None
    return TrainingInterrupted(stage, state, step, resume_command(workspace, only))
