"""The loop's engines: cleanup when a stage raises, the disabled scaler, the per-step callback,
DistributedDataParallel with accumulation and an empty share against one process, and a
resumed stage's log that replaces what the killed run logged after its state."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from drills import assert_like_one_process
from tagtune.synthetic.runs import free_port, make_training_workspace, tiny_train_recipe
from tagtune.train.engines import PlainEngine, open_engine
from tagtune.train.loss import diffusion_loss, training_scheduler
from tagtune.train.runtime import Runtime, kill_switch
from tagtune.train.stages import run_training
from tagtune.train.te_cache import Encoder

FROZEN_TE = {"lr_text_encoder": 0.0, "lr_text_encoder_2": 0.0}
CPU = Runtime(device=torch.device("cpu"))


class Stop(Exception):
    """Raised by a test's callback to stop a stage in the middle."""


def _unet_loss(comps, lat) -> torch.Tensor:
    recs = lat.records()[:2]
    latents = lat.load(recs)
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(latents.shape, generator=gen)
    embeds, pooled = Encoder(comps, tiny_train_recipe().train.stages[0])(["a", "b"])
    sched = training_scheduler(comps.scheduler_config)
    t = torch.tensor([100, 700])
    per_sample = diffusion_loss(
        comps.unet, sched, latents, noise, t, embeds, pooled, lat.time_ids(recs)
    )
    return per_sample.mean()


def test_a_stage_that_raises_leaves_no_stepping_hooks_and_modules_in_eval_mode(tmp_path, tiny_sdxl):
    # fused Adafactor hooks step a parameter whenever its gradient arrives: left behind, they
    # would move the weights in any later backward pass (another stage, a user's own code)
    recipe = tiny_train_recipe(epochs=2, batch_size=2, optimizer="adafactor", **FROZEN_TE)
    recipe.train.fused_backward = True
    ws, lat = make_training_workspace(tmp_path / "ws", recipe, n=4)
    comps = copy.deepcopy(tiny_sdxl)

    def stop_at_2(step: int) -> None:
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        run_training(ws, components=comps, latents=lat, progress=False, after_step=stop_at_2)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(comps, name)
        assert not module.training, name
        assert not any(p.requires_grad for p in module.parameters()), name
    before = {k: v.clone() for k, v in comps.unet.state_dict().items()}
    comps.unet.requires_grad_(True)
    _unet_loss(comps, lat).backward()
    after = comps.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a hook stepped the weights"
    assert all(p.grad is not None for p in comps.unet.parameters() if p.requires_grad)


def test_after_step_is_called_once_after_each_optimizer_step(tmp_path, tiny_sdxl):
    recipe = tiny_train_recipe(epochs=2, batch_size=2, **FROZEN_TE)
    ws, lat = make_training_workspace(tmp_path / "ws", recipe, n=6)
    seen: list[int] = []
    summary = run_training(
        ws, components=copy.deepcopy(tiny_sdxl), latents=lat, progress=False,
        after_step=seen.append,
    )  # fmt: skip
    assert summary.ran[0]["steps"] == 6
    assert seen == [1, 2, 3, 4, 5, 6]
    assert kill_switch(0) is None  # TAGTUNE_KILL_AT_STEP unset or 0: no callback at all


def test_the_scaler_without_fp16_changes_nothing_and_saves_nothing():
    stage = tiny_train_recipe(max_grad_norm=0.5).train.stages[0]
    torch.manual_seed(0)
    reference = torch.nn.Linear(4, 3)
    module = copy.deepcopy(reference)
    engine = PlainEngine(
        {"unet": module}, torch.optim.SGD(module.parameters(), lr=0.1), CPU, stage, 0, 0
    )
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    x = torch.randn(5, 4)
    for _ in range(3):
        loss = module(x).square().sum()
        engine.backward(loss, last_micro_batch=True)
        engine.step()
        reference(x).square().sum().backward()
        torch.nn.utils.clip_grad_norm_(list(reference.parameters()), 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert torch.equal(module.weight, reference.weight)
        assert all(p.grad is None for p in module.parameters())
    assert engine.scaler.scale(loss) is loss
    assert engine.state(None).meta["scaler"] is None  # state.json says: no scaler


def test_the_engine_follows_the_launch_and_the_recipe(tiny_sdxl):
    recipe = tiny_train_recipe(optimizer="adafactor")
    stage = recipe.train.stages[0]
    module = copy.deepcopy(tiny_sdxl.text_encoder)
    with open_engine({"text_encoder": module}, stage, recipe.train, CPU, 0) as plain:
        assert type(plain).__name__ == "PlainEngine"
    recipe.train.fused_backward = True
    params = list(module.parameters())
    with open_engine({"text_encoder": module}, stage, recipe.train, CPU, 0) as fused:
        assert type(fused).__name__ == "FusedEngine"
        assert all(p._post_accumulate_grad_hooks for p in params)
    assert not any(p._post_accumulate_grad_hooks for p in params)  # closed: hooks removed


@pytest.mark.slow
def test_ddp_with_accumulation_and_an_empty_share_matches_one_process(tmp_path, tiny_sdxl):
    # 9 images, 2 processes x batch 2, accumulation 2: steps of [4, 4] and [1] images; in the
    # last one process 1 has no image and joins the all-reduce with a zero-weight share
    two, _ = make_training_workspace(
        tmp_path / "two",
        tiny_train_recipe(epochs=1, batch_size=2, gradient_accumulation=2, **FROZEN_TE),
        n=9,
    )
    dump = tmp_path / "dump"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()),
        "-m", "tagtune.synthetic.runs", str(two.root), "--dump-weights", str(dump),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one, lat = make_training_workspace(
        tmp_path / "one",
        tiny_train_recipe(epochs=1, batch_size=4, gradient_accumulation=2, **FROZEN_TE),
        n=9,
    )
    single = copy.deepcopy(tiny_sdxl)
    summary = run_training(one, components=single, latents=lat, progress=False)
    assert summary.ran[0]["steps"] == 2
    r0, r1 = (load_file(dump / f"unet-rank{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks diverged"
    assert_like_one_process(r0, single.unet, tiny_sdxl.unet, "unet")


def test_a_resumed_log_replaces_what_a_killed_run_logged_after_its_state(tmp_path):
    from tagtune.report.runs import read_scalars
    from tagtune.train.monitor import Monitor

    killed = Monitor(tmp_path, progress=False)  # state at step 2, killed after step 3
    killed.start("main", 4, 0)
    for step in (1, 2, 3):
        killed.step(step, 1, float(step), {"unet": 1e-3}, 2)
    killed.close()
    resumed = Monitor(tmp_path, progress=False)
    resumed.start("main", 4, 2)
    for step in (3, 4):
        resumed.step(step, 1, 10.0 * step, {"unet": 1e-3}, 2)
    resumed.close()
    loss = [(s, v) for s, v, _ in read_scalars(tmp_path)["loss"]]
    assert loss == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
