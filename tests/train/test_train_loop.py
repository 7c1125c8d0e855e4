"""Training the tiny model in-process: learning, frozen parts, stage chaining, records, NaN stop."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from tagtune.core.errors import TrainingError
from tagtune.prepare.encode import vae_fingerprint
from tagtune.recipe.model import StageConfig
from tagtune.recipe.workspace import init_workspace
from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
from tagtune.train.data import Example
from tagtune.train.loss import diffusion_loss, training_scheduler
from tagtune.train.stages import run_training
from tagtune.train.te_cache import Encoder

FROZEN_TE = {"lr_text_encoder": 0.0, "lr_text_encoder_2": 0.0}


def _train(tmp_path, tiny_sdxl, recipe, n=8, favorites=(), **kw):
    ws, lat = make_training_workspace(tmp_path / "ws", recipe, n=n, favorites=favorites)
    comps = copy.deepcopy(tiny_sdxl)
    summary = run_training(ws, components=comps, latents=lat, progress=False, **kw)
    return ws, lat, comps, summary


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@torch.no_grad()
def _eval_loss(comps, lat, n=8):
    """Loss on fixed noise and timesteps: comparable before and after training."""
    from tagtune.models.conditioning import encode_prompts

    gen = torch.Generator().manual_seed(123)
    recs = lat.records()[:n]
    latents = lat.load(recs)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.linspace(100, 900, n).long()
    embeds, pooled = encode_prompts(comps, ["1girl, smile"] * n, max_token_length=75)
    sched = training_scheduler(comps.scheduler_config)
    loss = diffusion_loss(comps.unet, sched, latents, noise, t, embeds, pooled, lat.time_ids(recs))
    return float(loss.mean())


def test_loss_falls_when_overfitting_8_images(tmp_path, tiny_sdxl):
    recipe = tiny_train_recipe(
        epochs=8, batch_size=4, scheduler="constant", warmup_ratio=0.0, **FROZEN_TE
    )
    ws, lat = make_training_workspace(tmp_path / "ws", recipe, n=8)
    comps = copy.deepcopy(tiny_sdxl)
    before = _eval_loss(comps, lat)
    summary = run_training(ws, components=comps, latents=lat, progress=False)
    after = _eval_loss(comps, lat)
    assert summary.ran[0]["steps"] == 16
    assert after < 0.7 * before, (before, after)


def test_frozen_encoders_stay_bit_identical_and_run_json_has_the_record(tmp_path, tiny_sdxl):
    recipe = tiny_train_recipe(epochs=2, batch_size=4, **FROZEN_TE)
    recipe.train.keep_last = 1
    ws, _, comps, summary = _train(tmp_path, tiny_sdxl, recipe)
    assert _equal(_state(comps.text_encoder), _state(tiny_sdxl.text_encoder))
    assert _equal(_state(comps.text_encoder_2), _state(tiny_sdxl.text_encoder_2))
    assert not _equal(_state(comps.unet), _state(tiny_sdxl.unet))
    states = ws.runs_dir / "run1" / "main" / "states"
    assert [p.name for p in states.iterdir()] == ["step-4"]  # keep_last = 1
    assert sorted(p.name for p in (states / "step-4").iterdir()) == [
        "COMPLETE", "optimizer.json", "optimizer.safetensors", "rng.safetensors",
        "state.json", "unet.safetensors",
    ]  # fmt: skip
    assert list((ws.runs_dir / "run1" / "main" / "logs").glob("events.out.tfevents.*"))
    run = json.loads((ws.runs_dir / "run1" / "run.json").read_text())
    assert list(run) == [
        "run", "tagtune_version", "created_at", "updated_at", "recipe", "base_model", "vae",
        "stages", "totals", "export",
    ]  # fmt: skip
    assert run["vae"]["path"] == ""  # the base model's own VAE, by its weights' fingerprint
    assert run["vae"]["fingerprint"] == vae_fingerprint(tiny_sdxl.vae)
    assert run["run"] == "run1" and run["recipe"] == recipe.model_dump(mode="json")
    assert run["base_model"] == {"path": "tiny-sdxl(seed=0)", "sha256": "", "autov2": ""}
    (st,) = run["stages"]
    assert {k: st[k] for k in (
        "name", "status", "subset", "images", "repeats", "epochs", "batch_size",
        "gradient_accumulation", "steps_per_epoch", "steps", "warmup_steps", "final_state",
    )} == {
        "name": "main", "status": "complete", "subset": "all", "images": 8, "repeats": 1,
        "epochs": 2, "batch_size": 4, "gradient_accumulation": 1, "steps_per_epoch": 2,
        "steps": 4, "warmup_steps": 0, "final_state": "runs/run1/main/states/step-4",
    }  # fmt: skip
    assert st["settings"] == recipe.train.stages[0].model_dump(mode="json")
    assert st["inputs"]["latents_vae"] == "synthetic" and len(st["inputs"]["captions_sha256"]) == 64
    assert math.isfinite(st["final_loss"]) and st["seconds"] > 0
    assert run["totals"] == {"epochs": 2, "steps": 4, "images": 8, "seconds": st["seconds"]}
    # a finished run has nothing left to do
    again = run_training(ws, components=copy.deepcopy(tiny_sdxl), latents=None, progress=False)
    assert again.ran == [] and again.skipped == ["main"]


def test_stages_chain_each_from_the_previous_final_weights(tmp_path, tiny_sdxl):
    recipe = tiny_train_recipe(epochs=1, batch_size=4, lr_text_encoder_2=0.0)
    fav = StageConfig(
        name="favorites", subset="favorites", epochs=1, batch_size=2, optimizer="adamw",
        lr_unet=1e-3, scheduler="constant", noise_offset=0.0357, max_token_length=75, **FROZEN_TE,
    )  # fmt: skip
    recipe.train.stages = [recipe.train.stages[0], fav]
    ws, lat = make_training_workspace(tmp_path / "ws", recipe, n=8, favorites=[2, 5])
    with pytest.raises(TrainingError) as err:
        run_training(ws, stage="favorites", components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)  # fmt: skip
    assert str(err.value) == "stage 'favorites' starts from stage 'main', which is not complete"
    first = copy.deepcopy(tiny_sdxl)
    run_training(ws, stage="main", components=first, latents=lat, progress=False)
    assert not _equal(_state(first.text_encoder), _state(tiny_sdxl.text_encoder))
    # a fresh process: base weights, then main's final state, then favorites
    second = copy.deepcopy(tiny_sdxl)
    summary = run_training(ws, components=second, latents=lat, progress=False)
    assert summary.skipped == ["main"] and [s["name"] for s in summary.ran] == ["favorites"]
    assert summary.ran[0]["images"] == 2 and summary.ran[0]["steps"] == 1
    assert _equal(_state(second.text_encoder), _state(first.text_encoder))
    assert _equal(_state(second.text_encoder_2), _state(tiny_sdxl.text_encoder_2))
    assert not _equal(_state(second.unet), _state(first.unet))
    run = json.loads((ws.runs_dir / "run1" / "run.json").read_text())
    assert [(s["name"], s["status"]) for s in run["stages"]] == [
        ("main", "complete"),
        ("favorites", "complete"),
    ]
    assert run["totals"]["epochs"] == 2 and run["totals"]["steps"] == 3


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_state(tmp_path, tiny_sdxl):
    recipe = tiny_train_recipe(epochs=1, batch_size=1, **FROZEN_TE)
    recipe.train.save_every_n_steps = 1
    ws, lat = make_training_workspace(tmp_path / "ws", recipe, n=4)
    lat.overrides[3] = torch.full((4, 8, 8), float("nan"))
    with pytest.raises(TrainingError) as err:
        run_training(ws, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)
    msg = str(err.value)
    step = int(msg.split("at step ")[1].split()[0])
    assert step == 4  # the seed puts post 3 last: three good steps, each saved
    assert (
        msg
        == f"loss = nan: loss is nan at step {step} of stage 'main'; the last good state is kept"
    )
    states = ws.runs_dir / "run1" / "main" / "states"
    assert sorted(p.name for p in states.iterdir()) == ["step-1", "step-2", "step-3"]
    run = json.loads((ws.runs_dir / "run1" / "run.json").read_text())
    assert run["stages"][0]["status"] == "failed"
    # starting again without --resume refuses to overwrite; an incomplete state is skipped
    del lat.overrides[3]
    with pytest.raises(TrainingError) as err:
        run_training(ws, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)
    assert str(err.value).startswith(
        f"{ws.root / 'runs/run1/main'}: stage 'main' has resumable states"
    )
    # a state only continues the run that wrote it
    changed = recipe.model_copy(deep=True)
    changed.train.stages[0].batch_size = 2
    init_workspace(ws.root, changed, force=True)
    with pytest.raises(TrainingError) as err:
        run_training(ws, resume=True, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)  # fmt: skip
    assert "was written with 4 steps per epoch, the recipe and data now give 2" in str(err.value)
    changed.train.stages[0].batch_size = 1
    changed.train.stages[0].lr_unet = 5e-4
    init_workspace(ws.root, changed, force=True)
    with pytest.raises(TrainingError) as err:
        run_training(ws, resume=True, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)  # fmt: skip
    assert "stage 'main' changed since the state was written: lr_unet 0.001 -> 0.0005" in str(
        err.value
    )
    init_workspace(ws.root, recipe, force=True)
    (states / "step-99").mkdir()
    summary = run_training(ws, resume=True, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)  # fmt: skip
    assert f"skipping incomplete state {states / 'step-99'} (no COMPLETE marker)" in summary.notes
    assert summary.ran[0]["steps"] == 4


def test_cached_text_encoder_outputs_equal_encoding_every_step(tiny_sdxl):
    long = ", ".join(f"tag{i}" for i in range(60))
    caps = ["1girl, smile", long, ""]
    st = StageConfig(name="s", max_token_length=150, cache_text_encoder_outputs=True, **FROZEN_TE)
    cached = Encoder(tiny_sdxl, st)
    plain = Encoder(tiny_sdxl, st.model_copy(update={"cache_text_encoder_outputs": False}))
    assert cached.cached and not plain.cached
    (e1, p1), (e2, p2) = cached(caps), plain(caps)
    assert e1.shape == e2.shape == (3, 154, 80)
    assert torch.allclose(e1, e2, atol=1e-5) and torch.allclose(p1, p2, atol=1e-5)
    assert set(cached.cache) == {*caps}


def test_samples_are_seeded_pngs_with_infotext_and_a_grid(tmp_path, tiny_sdxl):
    from tagtune.generate.infotext import read_png_infotext

    recipe = tiny_train_recipe(epochs=1, batch_size=4, **FROZEN_TE)
    recipe.train.sample_every_n_epochs = 1
    recipe.train.sample_prompts = ["1girl, smile", "blue sky"]
    recipe.train.sample_steps = 2
    recipe.train.sample_size = (64, 64)
    ws, *_ = _train(tmp_path, tiny_sdxl, recipe, n=4)
    folder = ws.runs_dir / "run1" / "main" / "samples" / "epoch-001"
    assert sorted(p.name for p in folder.iterdir()) == ["00.png", "01.png", "grid.png"]
    info = read_png_infotext(folder / "01.png")
    assert (info.prompt, info.negative, info.steps, info.seed, info.width) == (
        "blue sky", "worst quality", 2, 43, 64,
    )  # fmt: skip


def test_dry_run_prints_steps_and_a_memory_estimate(tmp_path):
    from tagtune.cli.main import app

    recipe = tiny_train_recipe(epochs=3, batch_size=4, optimizer="adamw8bit")
    ws, _ = make_training_workspace(tmp_path / "ws", recipe, n=10, files=True)
    res = CliRunner().invoke(app, ["train", str(ws.root), "--dry-run", "--json"])
    assert res.exit_code == 2, res.output  # the plan, then what this machine cannot run
    out = json.loads(res.stdout)
    assert [(p["key"], p["stage"]) for p in out["problems"]] == [
        ("train.stages[0].optimizer", "main"), ("model.base", ""),
    ]  # fmt: skip
    (st,) = out["stages"]
    assert (st["name"], st["images"], st["steps_per_epoch"], st["steps"], st["warmup_steps"]) == (
        "main", 10, 3, 9, 1,
    )  # fmt: skip
    assert st["memory_gib_estimate"]["total"] > 10
    assert out["note"] == "memory figures are estimates for the real SDXL at 1024x1024, per GPU"
    assert (out["processes"], out["scheme"]) == (1, "one process")
    table = CliRunner().invoke(app, ["train", str(ws.root), "--dry-run"])
    assert table.exit_code == 2, table.output
    assert "total steps: 9" in table.output and "estimates" in table.output
    res = CliRunner().invoke(
        app, ["train", str(ws.root), "--dry-run", "--json", "--processes", "2", "--zero2"]
    )
    zero = json.loads(res.stdout)
    assert (zero["processes"], zero["scheme"]) == (2, "DeepSpeed ZeRO-2")
    assert zero["stages"][0]["steps_per_epoch"] == 2  # global batch 8
    assert (
        zero["stages"][0]["memory_gib_estimate"]["optimizer"]
        < st["memory_gib_estimate"]["optimizer"]
    )


def test_training_data_examples_follow_the_subset(tmp_path, tiny_sdxl):
    from tagtune.train.examples import load_examples

    recipe = tiny_train_recipe()
    ws, lat = make_training_workspace(tmp_path / "ws", recipe, n=6, favorites=[1, 4])
    fav, missing = load_examples(ws, StageConfig(name="f", subset="favorites"), lat)
    assert [e.post_id for e in fav] == [1, 4] and missing == 0
    assert isinstance(fav[0], Example) and fav[0].tags == tuple(fav[0].caption.split(", "))
    some, _ = load_examples(ws, StageConfig(name="w", subset="posts.id > 4"), lat)
    assert [e.post_id for e in some] == [5, 6]


def test_fused_adafactor_backward_matches_the_plain_step(tmp_path, tiny_sdxl):
    results = []
    for fused in (False, True):
        recipe = tiny_train_recipe(
            epochs=1, batch_size=2, optimizer="adafactor", max_grad_norm=0.0, **FROZEN_TE
        )
        recipe.train.fused_backward = fused
        _, _, comps, _ = _train(tmp_path / str(fused), tiny_sdxl, recipe, n=4)
        results.append(_state(comps.unet))
    assert _equal(*results)
    assert not _equal(results[0], _state(tiny_sdxl.unet))


def test_fused_backward_refuses_what_it_cannot_do(tmp_path, tiny_sdxl):
    recipe = tiny_train_recipe(epochs=1, gradient_accumulation=2, **FROZEN_TE)
    recipe.train.fused_backward = True
    with pytest.raises(TrainingError) as err:
        _train(tmp_path, tiny_sdxl, recipe, n=2)
    assert str(err.value).endswith(  # refused before any work, with every other problem
        "stage 'main': train.fused_backward: fused_backward needs adafactor, "
        "gradient_accumulation 1, one process without DeepSpeed and no fp16 loss scaling, but "
        "stage 'main' has optimizer = 'adamw', gradient_accumulation = 2"
    )


def test_bf16_weights_train_and_save_in_bf16(tmp_path, tiny_sdxl):
    from safetensors.torch import load_file

    recipe = tiny_train_recipe(epochs=1, batch_size=2, lr_text_encoder_2=0.0)
    recipe.train.weight_dtype = "bf16"
    ws, _, comps, summary = _train(tmp_path, tiny_sdxl, recipe, n=4)
    assert math.isfinite(summary.ran[0]["final_loss"])
    state = load_file(ws.root / summary.ran[0]["final_state"] / "unet.safetensors")
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    base_te2 = {k: v.to(torch.bfloat16) for k, v in _state(tiny_sdxl.text_encoder_2).items()}
    assert _equal(_state(comps.text_encoder_2), base_te2)


def test_training_refuses_a_catalog_judged_with_other_safety_lists(tmp_path, tiny_sdxl):
    recipe = tiny_train_recipe(epochs=1)
    ws, lat = make_training_workspace(tmp_path / "ws", recipe, n=4)
    text = ws.recipe_path.read_text()
    ws.recipe_path.write_text(
        text.replace("extra_blocked_tags = []", 'extra_blocked_tags = ["smile"]')
    )
    with pytest.raises(TrainingError) as exc:
        run_training(ws, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False)
    assert "safety lists or legacy_ratings changed since the catalog was judged" in str(exc.value)
    assert (
        exc.value.hint
        == "run `tagtune caption WS` (it re-judges the posts and rebuilds the captions)"
    )


def test_resume_without_a_state_says_it_starts_at_step_0(tmp_path, tiny_sdxl):
    recipe = tiny_train_recipe(epochs=1, **FROZEN_TE)
    _, _, _, summary = _train(tmp_path, tiny_sdxl, recipe, n=2, resume=True)
    assert "stage 'main': no resumable state, starting at step 0" in summary.notes
