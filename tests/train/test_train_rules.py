"""Training rules as pure functions: schedules, batching, caption draws, state files, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tagtune.core.errors import DependencyError
from tagtune.recipe.model import StageConfig
from tagtune.train.data import (
    Example,
    epoch_batches,
    group_steps,
    keyed_generator,
    rank_share,
    sample_draws,
    steps_per_epoch,
    transform_caption,
)
from tagtune.train.loss import min_snr_weights
from tagtune.train.optim import build_optimizer, lr_factor, warmup_steps
from tagtune.train.runtime import make_runtime
from tagtune.train.state import (
    flatten_optimizer,
    latest_state,
    prune_states,
    unflatten_optimizer,
)

TOTAL, WARM = 100, 10


def closed_form(name: str, s: int, cycles: int = 1) -> float:
    """The schedules written out independently of the implementation."""
    warm = s / WARM if s < WARM else None
    p = (s - WARM) / (TOTAL - WARM)
    return {
        "constant": 1.0,
        "constant_with_warmup": warm if warm is not None else 1.0,
        "linear": warm if warm is not None else (TOTAL - s) / (TOTAL - WARM),
        "cosine": warm if warm is not None else 0.5 * (1 + math.cos(math.pi * p)),
        "cosine_with_restarts": warm
        if warm is not None
        else (0.0 if p >= 1 else 0.5 * (1 + math.cos(math.pi * ((cycles * p) % 1)))),
    }[name]


@pytest.mark.parametrize(
    "name,cycles",
    [
        ("constant", 1),
        ("constant_with_warmup", 1),
        ("linear", 1),
        ("cosine", 1),
        ("cosine_with_restarts", 1),
        ("cosine_with_restarts", 3),
    ],
)
def test_lr_schedules_match_their_formulas_step_by_step(name, cycles):
    for s in range(TOTAL + 1):
        assert lr_factor(name, s, TOTAL, WARM, cycles) == pytest.approx(
            closed_form(name, s, cycles), abs=1e-12
        ), (name, s)


def test_lr_schedules_match_diffusers_get_scheduler():
    from diffusers.optimization import get_scheduler

    for name in ("linear", "cosine", "cosine_with_restarts", "constant_with_warmup"):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        kw = {"num_cycles": 3} if name == "cosine_with_restarts" else {}
        sched = get_scheduler(name, opt, num_warmup_steps=WARM, num_training_steps=TOTAL, **kw)
        for s in range(TOTAL):
            assert opt.param_groups[0]["lr"] == pytest.approx(
                lr_factor(name, s, TOTAL, WARM, 3), abs=1e-9
            ), (name, s)
            opt.step()
            sched.step()


@pytest.mark.parametrize(
    "ratio,steps,total,expected",
    [(0.1, 0, 58500, 5850), (0.0, 0, 100, 0), (0.0, 7, 100, 7), (0.25, 0, 10, 2)],
)
def test_warmup_from_ratio_or_steps(ratio, steps, total, expected):
    st = StageConfig(name="s", warmup_ratio=ratio, warmup_steps=steps)
    assert warmup_steps(st, total) == expected


def _examples(n: int, buckets=((64, 64), (64, 128))) -> list[Example]:
    return [Example(i, f"tag{i}", (f"tag{i}",), buckets[i % len(buckets)], i) for i in range(n)]


def test_every_batch_comes_from_one_bucket_and_order_is_seeded():
    ex = _examples(11)
    a = epoch_batches(ex, 4, repeats=2, seed=1, stage_index=0, epoch=0)
    assert all(len({ex[i].bucket for i in b}) == 1 for b in a)
    assert sorted(i for b in a for i in b) == sorted(list(range(11)) * 2)
    assert a == epoch_batches(ex, 4, 2, 1, 0, 0)
    assert a != epoch_batches(ex, 4, 2, 1, 0, 1)
    assert a != epoch_batches(ex, 4, 2, 2, 0, 0)
    # 12 and 10 items per bucket -> 3 + 3 batches of up to 4
    assert len(a) == 6
    assert steps_per_epoch(ex, StageConfig(name="s", batch_size=4, repeats=2)) == 6
    assert steps_per_epoch(ex, StageConfig(name="s", batch_size=2, repeats=2), world_size=2) == 6
    assert [len(s) for s in group_steps(a, 4)] == [4, 2]


@pytest.mark.parametrize(
    "n,world,expected",
    [
        (4, 2, [(0, [0, 1]), (2, [2, 3])]),
        (3, 2, [(0, [0]), (1, [1, 2])]),
        (4, 1, [(0, [0, 1, 2, 3])]),
    ],
)
def test_rank_share_splits_the_global_batch(n, world, expected):
    assert [rank_share(list(range(n)), r, world) for r in range(world)] == expected


TAGS = ("1girl", "solo", "long hair", "smile", "blue sky", "outdoors")


@pytest.mark.parametrize(
    "settings,check",
    [
        ({}, lambda c: c == ", ".join(TAGS)),
        (
            {"shuffle_captions": True, "keep_tokens": 2},
            lambda c: (
                c.split(", ")[:2] == ["1girl", "solo"] and sorted(c.split(", ")) == sorted(TAGS)
            ),
        ),
        ({"caption_dropout": 0.999}, lambda c: c == ""),
        (
            {"tag_dropout": 0.999, "keep_tokens": 1},
            lambda c: c == "1girl",
        ),
    ],
)
def test_caption_shuffle_keep_tokens_and_dropout(settings, check):
    st = StageConfig(name="s", **settings)
    ex = Example(1, ", ".join(TAGS), TAGS, (64, 64), None)
    for k in range(20):
        assert check(transform_caption(ex, st, keyed_generator(k))), settings


def test_shuffle_is_seeded_per_sample_and_varies_between_steps():
    st = StageConfig(name="s", shuffle_captions=True, noise_offset=0.05)
    ex = [Example(1, ", ".join(TAGS), TAGS, (64, 64), None)] * 2
    a = sample_draws(ex, 0, (4, 8, 8), st, (42, 0, 5, 0))
    b = sample_draws(ex, 0, (4, 8, 8), st, (42, 0, 5, 0))
    c = sample_draws(ex, 0, (4, 8, 8), st, (42, 0, 6, 0))
    assert a.captions == b.captions and torch.equal(a.noise, b.noise)
    assert torch.equal(a.timesteps, b.timesteps)
    assert not torch.equal(a.noise, c.noise)
    # a rank's slice draws exactly what the same positions draw in the whole batch
    tail = sample_draws(ex[1:], 1, (4, 8, 8), st, (42, 0, 5, 0))
    assert torch.equal(tail.noise[0], a.noise[1]) and tail.captions[0] == a.captions[1]


def test_min_snr_weights():
    ac = torch.tensor([0.9, 0.5, 0.1])
    t = torch.tensor([0, 1, 2])
    snr = ac / (1 - ac)  # 9, 1, 0.111
    w = min_snr_weights(ac, t, 5.0, "epsilon")
    assert torch.allclose(w, torch.minimum(snr, torch.tensor(5.0)) / snr)
    v = min_snr_weights(ac, t, 5.0, "v_prediction")
    assert torch.allclose(v, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    from safetensors.torch import load_file, save_file

    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([{"params": [p], "lr": 0.1, "base_lr": 0.1, "name": "unet"}])
    p.grad = torch.ones_like(p)
    opt.step()
    tensors, meta = flatten_optimizer(opt.state_dict())
    save_file(tensors, tmp_path / "o.safetensors")
    (tmp_path / "o.json").write_text(json.dumps(meta))
    back = unflatten_optimizer(
        load_file(tmp_path / "o.safetensors"), json.loads((tmp_path / "o.json").read_text())
    )
    opt2 = torch.optim.AdamW([{"params": [p], "lr": 0.1, "base_lr": 0.1, "name": "unet"}])
    opt2.load_state_dict(back)
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(v, opt2.state_dict()["state"][0][k])


def test_optimizer_state_with_nested_tensors_round_trips(tmp_path):
    """bitsandbytes keeps quantization maps and absmax tensors beside the moments (GPU finding)."""
    from safetensors.torch import load_file, save_file

    sd = {
        "state": {0: {"step": 3.0, "state1": torch.arange(4, dtype=torch.uint8),
                      "qmaps": [torch.ones(2), {"absmax": torch.full((1,), 0.5)}]}},
        "param_groups": [{"params": [0], "lr": 0.1, "betas": [0.9, 0.99], "qmap": torch.zeros(3)}],
    }  # fmt: skip
    tensors, meta = flatten_optimizer(sd)
    save_file(tensors, tmp_path / "o.safetensors")
    (tmp_path / "o.json").write_text(json.dumps(meta))
    back = unflatten_optimizer(
        load_file(tmp_path / "o.safetensors"), json.loads((tmp_path / "o.json").read_text())
    )
    assert back["state"][0]["step"] == 3.0
    assert torch.equal(back["state"][0]["state1"], sd["state"][0]["state1"])
    assert torch.equal(back["state"][0]["qmaps"][1]["absmax"], torch.full((1,), 0.5))
    assert torch.equal(back["param_groups"][0]["qmap"], torch.zeros(3))


def test_incomplete_states_are_skipped_with_a_message_and_pruned(tmp_path):
    states = tmp_path / "states"
    for step in (2, 4, 6):
        (states / f"step-{step}").mkdir(parents=True)
        (states / f"step-{step}" / "COMPLETE").write_text("ok\n")
    (states / "step-8").mkdir()  # renamed but no marker yet
    (states / ".step-10.abc.tmp").mkdir()  # still being written
    path, notes = latest_state(states)
    assert path == states / "step-6"
    assert notes == [
        f"skipping incomplete state {states / '.step-10.abc.tmp'} (no COMPLETE marker)",
        f"skipping incomplete state {states / 'step-8'} (no COMPLETE marker)",
    ]
    prune_states(states, keep_last=2)
    assert sorted(p.name for p in states.iterdir()) == ["step-4", "step-6", "step-8"]


def test_adamw8bit_on_cpu_is_a_clear_error():
    st = StageConfig(name="main", optimizer="adamw8bit")
    with pytest.raises(DependencyError) as err:
        build_optimizer({"unet": torch.nn.Linear(2, 2)}, st, torch.device("cpu"))
    assert str(err.value) == (
        "optimizer = 'adamw8bit': adamw8bit needs a CUDA GPU (bitsandbytes) "
        "(allowed: adamw, adafactor on this machine)"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
@pytest.mark.parametrize("mp", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_is_a_clear_error(mp):
    with pytest.raises(DependencyError) as err:
        make_runtime(mp)
    assert str(err.value) == (
        f"train.mixed_precision = '{mp}': mixed precision needs a CUDA GPU "
        '(allowed: "no" on this machine)'
    )


def test_adafactor_and_adamw_build_one_group_per_trained_module():
    st = StageConfig(name="s", optimizer="adafactor", lr_unet=1e-5, lr_text_encoder=2e-6)
    mods = {"unet": torch.nn.Linear(2, 2), "text_encoder": torch.nn.Linear(2, 2)}
    opt = build_optimizer(mods, st, torch.device("cpu"))
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [
        ("unet", 1e-5),
        ("text_encoder", 2e-6),
    ]
