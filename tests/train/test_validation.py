"""Validation: a deterministic held-out set never trained on, fixed draws, and the records.

The loss and conditioning gap of held-out images must be the same for the same weights, must
not disturb training (bit-identical weights whatever the evaluation schedule, and after a
SIGKILL and resume), and must reach run.json and TensorBoard.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from tagtune.core.errors import RecipeError, TrainingError
from tagtune.recipe.model import StageConfig, parse_recipe
from tagtune.recipe.validation import ValidationConfig
from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
from tagtune.train.runtime import Runtime
from tagtune.train.stages import run_training
from tagtune.train.te_cache import Encoder
from tagtune.train.validation import (
    EVALUATION_KEYS,
    Validator,
    choose_held_out,
    held_out_notes,
    held_out_size,
    stage_validation,
    wrong_captions,
)

FROZEN_TE = {"lr_text_encoder": 0.0, "lr_text_encoder_2": 0.0}


def _recipe(count: int = 2, **stage):
    recipe = tiny_train_recipe(**{"epochs": 2, "batch_size": 4, **FROZEN_TE, **stage})
    recipe.validation.count = count
    return recipe


def _run(tmp_path, recipe, n, name="ws", favorites=(), components=None):
    ws, lat = make_training_workspace(tmp_path / name, recipe, n=n, favorites=favorites)
    summary = run_training(ws, components=components, latents=lat, progress=False)
    run = json.loads((ws.runs_dir / "run1" / "run.json").read_text())
    return ws, lat, summary, run


def _no_seconds(evaluations):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in evaluations]


@pytest.mark.parametrize(
    "settings, posts, expected",
    [
        ({}, 19, 0),  # 5% of a tiny collection rounds down to none
        ({}, 20, 1),
        ({}, 200, 10),
        ({}, 9000, 64),  # capped at max_images
        ({"count": 10}, 200, 10),
        ({"count": 10}, 12, 6),  # never more than half the posts
        ({"share": 0.0}, 200, 0),
        ({"enabled": False, "count": 5}, 200, 0),
        ({"subset": "favorites", "max_images": 3}, 10, 3),
    ],
)
def test_held_out_size_rules(settings, posts, expected):
    assert held_out_size(ValidationConfig(**settings), posts) == expected


def test_recipe_table_is_strict():
    with pytest.raises(RecipeError, match="unknown key"):
        parse_recipe({"validation": {"shares": 0.1}})
    with pytest.raises(RecipeError, match="would hold out every post"):
        parse_recipe({"validation": {"subset": "all"}})
    with pytest.raises(RecipeError, match="exceeds validation.max_images"):
        parse_recipe({"validation": {"count": 65}})
    with pytest.raises(RecipeError, match="share"):
        parse_recipe({"validation": {"share": 0.9}})


def test_wrong_captions_are_another_images_and_differ_where_they_can():
    assert wrong_captions(["a", "a", "b", "c"]) == ["b", "b", "c", "a"]
    assert wrong_captions(["a", "a"]) == ["a", "a"]  # nothing else to take
    assert wrong_captions(["a"]) == [None]


def test_choice_is_deterministic_and_follows_share_count_or_subset(tmp_path):
    recipe = _recipe(count=4)
    ws, lat = make_training_workspace(tmp_path / "ws", recipe, n=20, favorites=[2, 4, 6, 8, 10])
    first = [h.post_id for h in choose_held_out(ws, recipe, lat)]
    assert len(first) == 4 and first == [h.post_id for h in choose_held_out(ws, recipe, lat)]
    recipe.validation.seed = 1
    assert [h.post_id for h in choose_held_out(ws, recipe, lat)] != first
    recipe.validation.subset = "favorites"
    assert sorted(h.post_id for h in choose_held_out(ws, recipe, lat)) == [2, 4, 6, 8, 10]
    recipe.validation.subset = "posts.id <= 3"
    assert sorted(h.post_id for h in choose_held_out(ws, recipe, lat)) == [1, 2, 3]
    recipe.validation.subset, recipe.validation.count = "", 0
    recipe.validation.share = 0.05
    assert choose_held_out(ws, recipe, lat)[0].post_id  # 5% of 20: one image
    assert held_out_notes(recipe.validation, choose_held_out(ws, recipe, lat)) == [
        "validation: 1 held-out images, never trained on; the conditioning gap needs at least 2"
    ]
    recipe.validation.share = 0.04
    assert choose_held_out(ws, recipe, lat) == []
    assert "too small" in held_out_notes(recipe.validation, [])[0]


def test_held_out_posts_are_never_trained_on_in_any_stage(tmp_path, tiny_sdxl, monkeypatch):
    import tagtune.train.loop as loop

    trained: dict[int, set[int]] = {}
    real = loop.sample_draws

    def spy(items, offset, shape, stage, key, *a, **kw):
        trained.setdefault(key[1], set()).update(e.post_id for e in items)
        return real(items, offset, shape, stage, key, *a, **kw)

    monkeypatch.setattr(loop, "sample_draws", spy)
    recipe = _recipe(count=6, epochs=1)
    fav = StageConfig(
        name="favorites", subset="favorites", epochs=1, batch_size=4, optimizer="adamw",
        lr_unet=1e-4, **FROZEN_TE, max_token_length=75,
    )  # fmt: skip
    recipe.train.stages = [*recipe.train.stages, fav]
    favorites = list(range(2, 25, 2))
    _, _, summary, run = _run(
        tmp_path, recipe, 24, favorites=favorites, components=copy.deepcopy(tiny_sdxl)
    )
    held = set(run["stages"][0]["validation"]["post_ids"])
    assert len(held) == 6 and held & set(favorites), "some held-out posts are favorites"
    assert trained[0] == set(range(1, 25)) - held  # stage main: every other post
    assert trained[1] == set(favorites) - held  # stage favorites: the favorites not held out
    for stage in run["stages"]:
        assert stage["validation"]["images"] == 6
        assert stage["images"] == len(trained[run["stages"].index(stage)])
        assert [e["step"] for e in stage["validation"]["evaluations"]] == [0, stage["steps"]]
    assert [s["validation"]["images"] for s in summary.ran] == [6, 6]


def test_the_same_weights_give_the_same_numbers_and_nothing_else_changes(tmp_path, tiny_sdxl):
    recipe = _recipe(count=3)
    ws, lat = make_training_workspace(tmp_path / "ws", recipe, n=8)
    comps = copy.deepcopy(tiny_sdxl)
    images = choose_held_out(ws, recipe, lat)
    validator = Validator(images, recipe.validation, lat, Runtime(torch.device("cpu")))
    encoder = Encoder(comps, recipe.train.stages[0])
    comps.unet.train()
    weights = {k: v.clone() for k, v in comps.unet.state_dict().items()}
    rng = torch.get_rng_state()
    first = validator.evaluate(comps, encoder, step=5, epoch=1.0)
    second = validator.evaluate(comps, encoder, step=5, epoch=1.0)
    assert tuple(first) == EVALUATION_KEYS
    assert _no_seconds([first]) == _no_seconds([second])
    assert first["conditioning_gap"] == pytest.approx(
        (first["loss_wrong_caption"] - first["loss"]) / first["loss"]
    )
    assert first["loss_wrong_caption"] != first["loss"]
    assert comps.unet.training and not comps.text_encoder.training  # modes put back
    assert torch.equal(torch.get_rng_state(), rng)  # no training random numbers drawn
    assert all(torch.equal(v, comps.unet.state_dict()[k]) for k, v in weights.items())
    comps.unet.requires_grad_(False)
    with torch.no_grad():
        next(comps.unet.parameters()).add_(0.05)
    assert validator.evaluate(comps, encoder, 6, 1.0)["loss"] != first["loss"]

    recipe.validation.count = 1
    single = choose_held_out(ws, recipe, lat)
    one = Validator(single, recipe.validation, lat, Runtime(torch.device("cpu")))
    alone = one.evaluate(comps, encoder, 0, 0.0)
    assert alone["loss"] is not None
    assert alone["loss_wrong_caption"] is None and alone["conditioning_gap"] is None


def test_evaluations_do_not_change_training_and_reach_tensorboard(tmp_path, tiny_sdxl):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    often = _recipe(count=2)
    often.validation.every_n_steps = 1
    ws_a, _, _, run_a = _run(tmp_path, often, 12, "often", components=copy.deepcopy(tiny_sdxl))
    rarely = _recipe(count=2)
    rarely.validation.every_n_epochs = 0
    ws_b, _, _, run_b = _run(tmp_path, rarely, 12, "rarely", components=copy.deepcopy(tiny_sdxl))

    evals_a = run_a["stages"][0]["validation"]["evaluations"]
    evals_b = run_b["stages"][0]["validation"]["evaluations"]
    assert [e["step"] for e in evals_a] == list(range(7))  # 10 images, batch 4: 6 steps
    assert [e["step"] for e in evals_b] == [0, 6]
    assert _no_seconds([evals_a[0], evals_a[-1]]) == _no_seconds(evals_b)  # same weights
    final = "runs/run1/main/states/step-6/unet.safetensors"
    assert (ws_a.root / final).read_bytes() == (ws_b.root / final).read_bytes()
    assert all(set(e) == set(EVALUATION_KEYS) for e in evals_a)
    assert evals_a[-1]["loss"] < evals_a[0]["loss"]

    events = EventAccumulator(str(ws_a.runs_dir / "run1" / "main" / "logs"))
    events.Reload()
    for key in ("loss", "loss_wrong_caption", "conditioning_gap"):
        scalars = events.Scalars(f"val/{key}")
        assert [s.step for s in scalars] == list(range(7))
        assert [s.value for s in scalars] == pytest.approx([e[key] for e in evals_a], rel=1e-6)


def test_resume_keeps_the_evaluations_up_to_the_state_and_refuses_another_held_out_set():
    ev = [{"step": s, "loss": 1.0} for s in (0, 3, 6)]
    previous = {"validation": {"images": 2, "post_ids": [3, 7], "evaluations": ev}}

    class Image:
        def __init__(self, pid):
            self.post_id = pid

    kept = stage_validation([Image(7), Image(3)], previous, 4, "stage")
    assert kept["evaluations"] == ev[:2] and kept["post_ids"] == [3, 7]
    with pytest.raises(TrainingError, match="held-out images changed"):
        stage_validation([Image(3), Image(8)], previous, 4, "stage")
    assert stage_validation([Image(3)], None, None, "stage")["evaluations"] == []


def _drill(ws_root, kill_at: int | None, resume: bool) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TAGTUNE_KILL_AT_STEP": str(kill_at or 0)}
    cmd = [sys.executable, "-m", "tagtune.synthetic.runs", str(ws_root)]
    if resume:
        cmd.append("--resume")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300).returncode


@pytest.mark.slow
def test_sigkill_and_resume_with_validation_is_bit_identical(tmp_path, tiny_sdxl):
    recipe = _recipe(count=2, shuffle_captions=True, noise_offset=0.05)
    recipe.train.save_every_n_steps = 2
    recipe.validation.every_n_steps = 1
    killed, _ = make_training_workspace(tmp_path / "killed", recipe, n=10)  # 8 train: 4 steps
    assert _drill(killed.root, 4, resume=False) == -9  # state at step 2, evaluations to 3
    assert _drill(killed.root, None, resume=True) == 0
    _, _, _, ref = _run(tmp_path, recipe, 10, "ref", components=copy.deepcopy(tiny_sdxl))

    final = "runs/run1/main/states/step-4/unet.safetensors"
    assert (killed.root / final).read_bytes() == (tmp_path / "ref" / final).read_bytes()
    run = json.loads((killed.runs_dir / "run1" / "run.json").read_text())
    resumed = run["stages"][0]["validation"]["evaluations"]
    assert [e["step"] for e in resumed] == [0, 1, 2, 3, 4]  # step 3 redone, recorded once
    assert _no_seconds(resumed) == _no_seconds(ref["stages"][0]["validation"]["evaluations"])


@pytest.mark.slow
def test_two_processes_share_the_evaluation_and_report_one_processs_numbers(tmp_path, tiny_sdxl):
    from tagtune.synthetic.runs import free_port

    recipe = _recipe(count=3, epochs=1, batch_size=2)  # 3 held out: 2 on rank 0, 1 on rank 1
    two, _ = make_training_workspace(tmp_path / "two", recipe, n=11)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()), "-m", "tagtune.synthetic.runs", str(two.root),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = _recipe(count=3, epochs=1, batch_size=4)  # the same global batch in one process
    _, _, _, ref = _run(tmp_path, one, 11, "one", components=copy.deepcopy(tiny_sdxl))

    run = json.loads((two.runs_dir / "run1" / "run.json").read_text())
    evals = run["stages"][0]["validation"]["evaluations"]
    expected = ref["stages"][0]["validation"]["evaluations"]
    assert [e["step"] for e in evals] == [e["step"] for e in expected] == [0, 2]
    for got, want in zip(evals, expected, strict=True):
        for key in ("loss", "loss_wrong_caption", "conditioning_gap"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
