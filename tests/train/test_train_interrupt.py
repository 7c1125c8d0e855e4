"""`tagtune train` stopped by Ctrl-C or SIGTERM: the message, run.json `interrupted`, resume.

Also the progress a log file gets: plain periodic lines, no terminal escapes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tagtune.synthetic.runs import make_theme_workspace, tiny_train_recipe


def _states(ws_root) -> list[int]:
    states = ws_root / "runs/run1/main/states"
    if not states.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in states.glob("step-*") if (p / "COMPLETE").is_file())


def _train_until_state(ws_root, after: int, sig: int, resume: bool) -> subprocess.CompletedProcess:
    """Run `tagtune train WS` (stdout and stderr to pipes, not a terminal); send `sig` once a
    state newer than step `after` is complete."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TAGTUNE_PROGRESS_INTERVAL": "0",  # a plain line at each step
        "COLUMNS": "300",
    }
    env.pop("TAGTUNE_PROGRESS", None)
    cmd = [sys.executable, "-m", "tagtune.cli.main", "train", str(ws_root)]
    proc = subprocess.Popen(
        [*cmd, "--resume"] if resume else cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not [s for s in _states(ws_root) if s > after]:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no state written"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _stage(ws_root) -> dict:
    return json.loads((ws_root / "runs/run1/run.json").read_text())["stages"][0]


@pytest.mark.slow
def test_sigint_then_sigterm_say_what_was_kept_and_resume_continues(tmp_path, tiny_sdxl):
    from tagtune.models.save import save_single_file

    # 4 images, batch 2: 2 steps per epoch, a state at each epoch's end; far more steps than
    # run before the signal
    recipe = tiny_train_recipe(epochs=200, lr_text_encoder=0.0, lr_text_encoder_2=0.0)
    recipe.model.base = "base.safetensors"
    ws, _ = make_theme_workspace(tmp_path / "ws", recipe, tiny_sdxl.vae, n=4)
    save_single_file(tiny_sdxl, ws.root / "base.safetensors", dtype="fp32")
    resume = f"resume with: tagtune train {ws.root} --resume"

    first = _train_until_state(ws.root, 0, signal.SIGINT, resume=False)
    assert first.returncode == 130, first.stderr
    kept = _states(ws.root)[-1]
    assert "training stopped: stage 'main' was interrupted" in first.stderr
    state = ws.root / f"runs/run1/main/states/step-{kept}"
    assert f"kept state {state} (step {kept})" in first.stderr
    assert resume in first.stderr
    assert "Traceback" not in first.stderr
    assert _stage(ws.root)["status"] == "interrupted"
    # progress in a log: plain lines (step, loss, s/it, ETA), no escape codes, no live bar
    assert "\x1b" not in first.stderr + first.stdout
    lines = re.findall(
        r"^main: (\d+)/400 \(\d+%\), [0-9.]+ s/it, ETA [0-9:]+, .*loss", first.stderr, re.M
    )
    assert len(lines) >= 2 and lines == sorted(lines, key=int)

    second = _train_until_state(ws.root, kept, signal.SIGTERM, resume=True)
    assert second.returncode == 130, second.stderr
    newer = _states(ws.root)[-1]
    assert newer > kept
    assert (
        f"kept state {ws.root / f'runs/run1/main/states/step-{newer}'} (step {newer})"
        in second.stderr
    )
    assert resume in second.stderr
    stage = _stage(ws.root)
    assert stage["status"] == "interrupted"
    assert [r["step"] for r in stage["resumes"]] == [kept]  # it continued from the kept state
    assert re.search(rf"^main: {kept + 1}/400 ", second.stderr, re.M)


def test_an_interrupt_before_any_state_says_none_was_kept(tmp_path):
    from tagtune.train.interrupt import interrupted

    stop = interrupted(tmp_path / "my ws", "main", tmp_path / "states", only="favorites")
    lines = stop.message().splitlines()
    assert lines[1] == "no resumable state was kept; the stage starts again at step 0"
    assert (
        lines[2] == f"resume with: tagtune train '{tmp_path / 'my ws'}' --stage favorites --resume"
    )
    assert isinstance(stop, KeyboardInterrupt)
