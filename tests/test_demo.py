"""The README's main job: `tagtune demo` runs the whole pipeline end to end (reduced size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_pipeline(quick_demo):
    result, out = quick_demo
    assert result.exit_code == 0, result.output
    paths = {k: Path(v) for k, v in out["paths"].items()}
    for name in ("catalog", "captions", "model", "model card", "grid", "report"):
        assert paths[name].is_file(), name

    facts = out["facts"]
    assert facts["ingest"]["problems"], "the demo collection carries broken files"
    assert facts["stages"] == ["main", "favorites"]
    with safe_open(paths["model"], "pt") as f:
        meta = f.metadata()
        assert len(list(f.keys())) == 2513
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert meta["modelspec.hash_sha256"] == "0x" + facts["hashes"]["autov3"]

    card = paths["model card"].read_text()
    assert facts["hashes"]["autov2"] in card
    run = json.loads((paths["run"] / "run.json").read_text())
    assert f"| Training steps | {run['totals']['steps']} |" in card
    assert [s["status"] for s in run["stages"]] == ["complete", "complete"]
    assert len(list(paths["samples"].glob("*.png"))) >= 3  # images + grid

    # validation loss and conditioning gap before and after each stage, from run.json
    validation = facts["validation"]
    assert list(validation) == ["main", "favorites"]
    for stage in run["stages"]:
        v, evals = validation[stage["name"]], stage["validation"]["evaluations"]
        assert v["images"] == 4 and stage["validation"]["images"] == 4
        assert v["before"]["loss"] == evals[0]["loss"] and v["after"]["loss"] == evals[-1]["loss"]
        for when in ("before", "after"):
            assert isinstance(v[when]["conditioning_gap"], float)
    assert validation["main"]["after"]["loss"] < validation["main"]["before"]["loss"]
    assert "## Validation" in card


def test_demo_prints_validation_before_and_after_each_stage(capsys):
    from tagtune.cli.demo import _print_validation

    before = {"loss": 0.5, "loss_wrong_caption": 0.5, "conditioning_gap": 0.0}
    after = {"loss": 0.25, "loss_wrong_caption": 0.3, "conditioning_gap": 0.2}
    _print_validation({"main": {"images": 4, "before": before, "after": after, "seconds": 1.0}})
    out = capsys.readouterr().out
    assert "0.5000 -> 0.2500" in out and "+0.00% -> +20.00%" in out


def test_demo_never_deletes_a_folder_it_did_not_write(tmp_path):
    from tagtune.core.errors import InputError
    from tagtune.demo import run_demo

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("my work")
    with pytest.raises(InputError, match="not a demo folder"):
        run_demo(precious)
    assert (precious / "thesis.txt").read_text() == "my work"
