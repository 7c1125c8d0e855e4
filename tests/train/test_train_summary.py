"""The end of `tagtune train`: what "final loss" is, where samples, logs and states are."""

from __future__ import annotations

from typer.testing import CliRunner

from tagtune.cli.main import app
from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe


def test_the_summary_says_what_final_loss_is_and_where_everything_went(tmp_path, monkeypatch):
    import tagtune.train.stages as stages

    ws, _ = make_training_workspace(tmp_path / "ws", tiny_train_recipe(), n=2)
    run = ws.runs_dir / "run1"
    (run / "main/samples").mkdir(parents=True)
    ran = [
        {"name": "main", "images": 2, "steps": 4, "seconds": 1.0, "final_loss": 0.25,
         "final_state": "runs/run1/main/states/step-4", "validation": None},
        {"name": "favorites", "images": 2, "steps": 2, "seconds": 1.0, "final_loss": 0.2,
         "final_state": "runs/run1/favorites/states/step-2", "validation": None},
    ]  # fmt: skip
    summary = stages.TrainSummary(run, ran=ran)
    monkeypatch.setattr(stages, "run_training", lambda *a, **k: summary)
    res = CliRunner().invoke(app, ["train", str(ws.root)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "final loss: the mean training loss of the stage's last epoch" in lines
    assert (
        f"main: samples {run / 'main/samples'}, states {run / 'main/states'} "
        f"(final: runs/run1/main/states/step-4), TensorBoard logs {run / 'main/logs'}"
    ) in lines
    assert (  # no samples folder: none named
        f"favorites: states {run / 'favorites/states'} "
        f"(final: runs/run1/favorites/states/step-2), TensorBoard logs {run / 'favorites/logs'}"
    ) in lines
    assert f"open the logs: tensorboard --logdir {run}" in lines
