"""GPU checks: one real-size SDXL training step with the settings `tagtune init` writes, its
peak memory against the dry-run estimate and its s/it; then the GPU paths on the tiny model
(bf16 + 8-bit AdamW + gradient checkpointing, fp16 + scaler, fused Adafactor, sampling and
generation on the GPU).

    PYTHONPATH=src python benchmarks/gpu_check.py              # on a CUDA machine
    PYTHONPATH=src python benchmarks/gpu_check.py --steps 5    # more real-size steps per stage
    PYTHONPATH=src python benchmarks/gpu_check.py --cpu        # the tiny flow on CPU (fp32, adamw)

The real-size step has random weights built from the SDXL 1.0 configs in
src/tagtune/configs/sdxl-base, a batch of 4 latents of 1024x1024 images, 225-token captions,
and runs through the loop's own pieces (encoder, forward_loss, the plain engine's backward and
step with stochastic rounding). Peak memory is `torch.cuda.max_memory_allocated` from the
first step on, compared with the estimate less its overhead term (the CUDA context, which
torch's allocator does not count). Without a CUDA device (and without --cpu) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import gc
import tempfile
import time
import traceback
from pathlib import Path

import torch

GIB = 1024**3
CAPTION_TAGS = ["1girl", "solo", "long hair", "smile", "blue sky", "red circle", "outdoors"]


def random_sdxl(device: str):
    """SDXL 1.0 (U-Net and both text encoders; no VAE) with random weights on `device`."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tagtune.models.clip_vocab import sdxl_tokenizers
    from tagtune.models.components import SDXLComponents
    from tagtune.models.configs import sdxl_base_configs
    from tagtune.models.tiny import SCHEDULER_CONFIG

    configs = sdxl_base_configs()
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        te1 = CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"]))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(configs["text_encoder_2"]))
    tok1, tok2 = sdxl_tokenizers()
    return SDXLComponents(unet, torch.nn.Identity(), te1, te2, tok1, tok2, dict(SCHEDULER_CONFIG))


def real_size_step(stage_name: str, steps: int) -> bool:
    """Train `steps` steps of the init recipe's stage on real-size SDXL; print peak vs estimate."""
    from tagtune.recipe.model import Recipe
    from tagtune.synthetic.runs import InMemoryLatents
    from tagtune.train.data import Example
    from tagtune.train.engines import open_engine
    from tagtune.train.loop import StageJob, enable_gradient_checkpointing, forward_loss
    from tagtune.train.loss import training_scheduler
    from tagtune.train.memory import estimate_memory
    from tagtune.train.optim import trainable_modules
    from tagtune.train.runtime import make_runtime
    from tagtune.train.te_cache import Encoder

    recipe = Recipe()  # what `tagtune init` writes
    cfg, stage = recipe.train, recipe.stage(stage_name)
    estimate = estimate_memory(stage, cfg)
    try:
        rt = make_runtime(cfg.mixed_precision)
        comps = random_sdxl("cuda")
        for name in ("unet", "text_encoder", "text_encoder_2"):
            module = getattr(comps, name).requires_grad_(False).eval()
            if cfg.weight_dtype == "bf16":
                module.to(torch.bfloat16)
        trained = trainable_modules({n: getattr(comps, n) for n in
                                     ("unet", "text_encoder", "text_encoder_2")}, stage)  # fmt: skip
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(trained)
        engine = open_engine(trained, stage, cfg, rt, 0)  # bf16 weights: stochastic rounding
        latents = InMemoryLatents(dict.fromkeys(range(1, stage.batch_size + 1), (1024, 1024)))
        caption = ", ".join(CAPTION_TAGS * 9)  # about 200 tokens: three 75-token chunks
        examples = [Example(r.post_id, caption, tuple(CAPTION_TAGS * 9), r.bucket, r)
                    for r in latents.records()]  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            job = StageJob(comps, stage, 0, cfg, examples, latents, Path(tmp), rt)
            encoder = Encoder(comps, stage)
            scheduler = training_scheduler(comps.scheduler_config)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            seconds = []
            for step in range(steps):
                t0 = time.perf_counter()
                engine.begin_step(step, 1.0)
                batch = list(range(len(examples)))
                key = (cfg.seed, 0, step, 0)
                engine.backward(forward_loss(job, encoder, scheduler, batch, key, 1), True)
                engine.step()
                torch.cuda.synchronize()
                seconds.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / GIB
        reserved = torch.cuda.max_memory_reserved() / GIB
        steady = seconds[1:] or seconds
        print(
            f"ok   real-size step, stage {stage_name} ({stage.optimizer}, weights "
            f"{cfg.weight_dtype}, checkpointing {cfg.gradient_checkpointing}, batch "
            f"{stage.batch_size}): peak allocated {peak:.2f} GiB (reserved {reserved:.2f}), "
            f"estimate {estimate.total - estimate.overhead:.2f} GiB without the "
            f"{estimate.overhead} GiB context ({estimate.total:.2f} in all; parts "
            f"{estimate.to_json()}); {sum(steady) / len(steady):.2f} s/it over {len(steady)} "
            f"steps (first {seconds[0]:.2f} s)",
            flush=True,
        )
        return True
    except Exception:
        print(f"FAIL real-size step, stage {stage_name}")
        traceback.print_exc()
        return False
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def run_case(name: str, base, cpu: bool, **overrides) -> bool:
    """Train two stages' worth of steps with the given options; print loss and speed."""
    from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
    from tagtune.train.stages import run_training

    train_opts = {k: overrides.pop(k) for k in list(overrides) if k in ("mixed_precision",
                  "gradient_checkpointing", "weight_dtype", "fused_backward")}  # fmt: skip
    recipe = tiny_train_recipe(epochs=2, batch_size=4, **overrides)
    for key, value in train_opts.items():
        setattr(recipe.train, key, "no" if cpu and key == "mixed_precision" else value)
    recipe.train.sample_every_n_epochs = 2
    recipe.train.sample_prompts = ["1girl, smile, blue sky"]
    recipe.train.sample_steps = 4
    recipe.train.sample_size = (128, 128)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ws, mem = make_training_workspace(Path(tmp) / "ws", recipe, n=16, sizes=[(128, 128)])
            summary = run_training(ws, components=copy.deepcopy(base), latents=mem, progress=False)
            losses = [s.get("final_loss") for s in summary.ran]
            samples = sorted(str(p.name) for p in Path(tmp).rglob("*.png"))
        print(f"ok   {name}: final loss {losses}, {len(samples)} sample PNGs, "
              f"{time.perf_counter() - t0:.1f}s")  # fmt: skip
        return True
    except Exception:
        print(f"FAIL {name}")
        traceback.print_exc()
        return False


def tiny_checks(cpu: bool) -> bool:
    """The GPU paths on the tiny model (or the same flow on CPU with --cpu)."""
    from tagtune.generate.pipeline import generate
    from tagtune.models.tiny import build_tiny_sdxl

    base = build_tiny_sdxl(0)
    opt8 = "adamw" if cpu else "adamw8bit"
    cases = [
        ("bf16 + adamw8bit + checkpointing", dict(mixed_precision="bf16", optimizer=opt8,
                                                  gradient_checkpointing=True)),
        ("bf16 weights + adamw8bit (rounded)", dict(mixed_precision="bf16", weight_dtype="bf16",
                                                    optimizer=opt8, gradient_checkpointing=True)),
        ("fp16 autocast + scaler + adamw", dict(mixed_precision="fp16", optimizer="adamw")),
        ("bf16 weights + fused adafactor", dict(mixed_precision="bf16", weight_dtype="bf16",
                                                optimizer="adafactor", fused_backward=True,
                                                lr_text_encoder=0.0, lr_text_encoder_2=0.0)),
    ]  # fmt: skip
    ok = all([run_case(name, base, cpu, **opts) for name, opts in cases])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate(base, ", ".join(["1girl, smile, blue sky"] * 20), negative="worst quality",
                         steps=4, size=(128, 128), n=2, seed=1, out_dir=tmp,
                         device="cpu" if cpu else "cuda")  # fmt: skip
        print(f"ok   generate (long prompt) on {'cpu' if cpu else 'cuda'}: "
              f"{len(paths)} PNGs, {time.perf_counter() - t0:.1f}s")  # fmt: skip
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the tiny flow on CPU (fp32, adamw)")
    parser.add_argument("--steps", type=int, default=3, help="real-size steps per stage")
    parser.add_argument("--skip-real", action="store_true", help="only the tiny-model checks")
    args = parser.parse_args()
    if args.cpu:
        raise SystemExit(0 if tiny_checks(cpu=True) else 1)
    if not torch.cuda.is_available():
        print("no CUDA device: the real-size step and the GPU paths need one; nothing measured "
              "(--cpu runs the tiny-model flow on CPU)")  # fmt: skip
        raise SystemExit(0)
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    ok = True
    if not args.skip_real:
        ok = all([real_size_step(name, args.steps) for name in ("main", "favorites")])
    ok = tiny_checks(cpu=False) and ok
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
