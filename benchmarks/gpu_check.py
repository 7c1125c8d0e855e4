"""GPU paths on a CUDA machine: bf16 + 8-bit AdamW + gradient checkpointing, fp16 + scaler,
fused Adafactor, sampling and generation on the GPU, all on the tiny model.

    PYTHONPATH=src python benchmarks/gpu_check.py            # on a CUDA machine
    PYTHONPATH=src python benchmarks/gpu_check.py --cpu      # the same flow on CPU (fp32, adamw)

Prints one line per check with its loss and time; exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import traceback
from pathlib import Path

import torch


def run_case(name: str, base, cpu: bool, **overrides) -> bool:
    """Train two stages' worth of steps with the given options; print loss and speed."""
    from tagtune.train.stages import run_training
    from tagtune.train.synthetic import make_training_workspace, tiny_train_recipe

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the flow on CPU (fp32, adamw)")
    args = parser.parse_args()
    from tagtune.generate import generate
    from tagtune.models.tiny import build_tiny_sdxl

    if not args.cpu:
        assert torch.cuda.is_available(), "no CUDA device"
        print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    base = build_tiny_sdxl(0)
    opt8 = "adamw" if args.cpu else "adamw8bit"
    cases = [
        ("bf16 + adamw8bit + checkpointing", dict(mixed_precision="bf16", optimizer=opt8,
                                                  gradient_checkpointing=True)),
        ("fp16 autocast + scaler + adamw", dict(mixed_precision="fp16", optimizer="adamw")),
        ("bf16 weights + fused adafactor", dict(mixed_precision="bf16", weight_dtype="bf16",
                                                optimizer="adafactor", fused_backward=True,
                                                lr_text_encoder=0.0, lr_text_encoder_2=0.0)),
    ]  # fmt: skip
    ok = all([run_case(name, base, args.cpu, **opts) for name, opts in cases])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = generate(base, ", ".join(["1girl, smile, blue sky"] * 20), negative="worst quality",
                         steps=4, size=(128, 128), n=2, seed=1, out_dir=tmp,
                         device="cpu" if args.cpu else "cuda")  # fmt: skip
        print(f"ok   generate (long prompt) on {'cpu' if args.cpu else 'cuda'}: "
              f"{len(paths)} PNGs, {time.perf_counter() - t0:.1f}s")  # fmt: skip
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
